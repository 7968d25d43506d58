"""Actions of the shipped flows: the ordering package's, bound to data/catalogue.yaml.

Add your own here with @action (see docs/flows.md, "Actions: calling your code")."""

from ordering.actions import ordering

__all__ = ["ordering"]
