"""What reading a flow file keeps track of: its problems at file:line, the slots the flow sets
and the names its texts use, and the small checks every part of the reader needs."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from ..errors import Problem
from .expr import Expr, ExprError, parse
from .source import SourceError, YList, YMap, load
from .spec import SLOT
from .text import BUILTIN_VALUES


class Reading:
    def __init__(self, file: str, templates: dict[str, Any] | None = None) -> None:
        self.file = file
        self.templates = templates or {}  # the approved templates (engine.flows.templates)
        self.problems: list[Problem] = []
        self.slots: set[str] = set()  # every slot the flow can set
        self.used: list[tuple[int, str, str]] = []  # (line, file, placeholder) to check at the end
        self.exprs: list[tuple[int, str, Expr]] = []  # (line, file, expression), likewise
        self.calls: list[tuple[int, str, dict[str, Any]]] = []  # (line, action, its with:)
        self.data: set[str] = set()  # the names of the flow's data tables
        self.broken: set[str] = set()  # tables that could not be read (reported already)
        self.fields: dict[str, frozenset[str] | None] = {}  # each table's record fields
        # Templates of rows built from a list: (fields they may use, None: any), their
        # placeholders and expressions, checked at the end like the others.
        self.scoped: list[
            tuple[frozenset[str] | None, list[tuple[int, str, str]], list[tuple[int, str, Expr]]]
        ] = []

    def known(self) -> set[str]:
        """Every name a text or an expression may use: slots, data tables, built-in values."""
        return self.slots | self.data | BUILTIN_VALUES

    def err(self, line: int, message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.file, line, message))

    def warn(self, line: int, message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.file, line, message, warning=True))

    def expression(self, raw: Any, line: int, *, file: str | None = None) -> Expr | None:
        """Read an expression; its names are checked once every slot is known."""
        if not isinstance(raw, str):
            self.err(line, 'an expression as text, like "total >= 50"', file)
            return None
        try:
            expr = parse(raw)
        except ExprError as e:
            self.err(line, f"expression {raw.strip()[:80]!r}: {e}", file)
            return None
        self.exprs.append((line, file or self.file, expr))
        return expr

    def yaml(self, text: str, file: str, *, numbers: bool = False) -> Any:
        try:
            doc, problems = load(text, numbers=numbers)
        except SourceError as e:
            self.err(e.line, e.message, file)
            return None
        for p in problems:
            self.err(p.line, p.message, file)
        return doc

    def slot_name(self, name: str, line: int) -> bool:
        if not SLOT.fullmatch(name) or name in BUILTIN_VALUES:
            self.err(
                line, f"slot name {name!r}: use letters, digits and '_' (not name, text or phone)"
            )
            return False
        if name in self.data:
            self.err(line, f"{name!r} is a data table of this flow; a slot needs another name")
            return False
        self.slots.add(name)
        return True

    def words(self, raw: Any, line: int, key: str) -> tuple[str, ...]:
        items = raw if isinstance(raw, YList) else [raw]
        if not items or not all(isinstance(v, str) and v.strip() for v in items):
            self.err(line, f"{key}: text, or a list of texts")
            return ()
        return tuple(items)

    def scalar(self, parent: YMap, key: str, *, required: bool = False) -> str | None:
        if key not in parent or parent[key] is None:
            if required:
                self.err(parent.line, f"{key}: is required")
            return None
        value = parent[key]
        if not isinstance(value, str):
            self.err(parent.line_of(key), f"{key}: must be text")
            return None
        return value

    def keys(
        self, mapping: YMap, allowed: tuple[str, ...], what: str, file: str | None = None
    ) -> None:
        for key in mapping:
            if key not in allowed:
                self.err(
                    mapping.line_of(key),
                    f"unknown key {key!r} in {what}{self.hint(key, allowed)}",
                    file,
                )

    @staticmethod
    def hint(word: str, options: Iterable[str]) -> str:
        close = difflib.get_close_matches(word, list(options), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""
