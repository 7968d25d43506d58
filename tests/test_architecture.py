"""Dependencies point inward: the engine imports only the stdlib, PyYAML, python-statemachine,
simpleeval (the flows' expressions), dateparser (typed answers) and regex (patterns with a
time bound), which do no I/O, and itself; adapters import the engine; only the two
composition roots import both: server.py and the command line's engine/__main__.py."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.support import ROOT

ENGINE_ALLOWED = {"yaml", "statemachine", "simpleeval", "dateparser", "regex", "engine"}
FORBIDDEN_IN_ADAPTERS = {"server"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_engine_imports_no_adapter_and_no_io_library() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if path.name == "__main__.py":
            continue  # a composition root (see the next tests)
        outside = imports(path) - stdlib - ENGINE_ALLOWED
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_adapters_never_import_the_composition_root() -> None:
    for path in sorted((ROOT / "adapters").rglob("*.py")):
        wrong = imports(path) & FORBIDDEN_IN_ADAPTERS
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_only_the_composition_root_imports_engine_and_adapters_together() -> None:
    both = []
    for path in [*ROOT.glob("*.py"), *(ROOT / "engine").rglob("*.py")]:
        found = imports(path)
        if {"engine", "adapters"} <= found:
            both.append(str(path.relative_to(ROOT)))
    assert sorted(both) == ["engine/__main__.py", "server.py"]


def test_nothing_reads_the_environment_at_import_time() -> None:
    """Settings.from_env is the one door; modules do not call os.environ / os.getenv at top level."""
    for path in [
        ROOT / "server.py",
        *sorted((ROOT / "engine").rglob("*.py")),
        *sorted((ROOT / "adapters").rglob("*.py")),
    ]:
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            for inner in ast.walk(node):
                reads = (
                    isinstance(inner, ast.Attribute) and inner.attr in ("environ", "getenv")
                ) or (isinstance(inner, ast.Name) and inner.id in ("environ", "getenv"))
                assert not reads, f"{path.name}:{inner.lineno} reads the environment at import time"
