"""The README tells the truth: its flow example validates and runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from engine.flows import load_flows, validate_path
from ordering.catalogue import load_catalogue
from tests.support import ROOT

DOCS_DATA = ROOT / "tests" / "payloads" / "docs_data"


def test_the_flows_in_the_readme_and_the_docs_are_valid(tmp_path: Path) -> None:
    """Every YAML example in README.md and docs/flows.md is a whole flow; the one with action:
    steps validates with the actions.py the docs show beside it."""
    texts = [(ROOT / name).read_text() for name in ("README.md", "docs/flows.md")]
    examples = [e for t in texts for e in re.findall(r"```yaml\n(.*?)```", t, re.S)]
    catalogues = [e for e in examples if e.startswith("# FLOWS_DIR/data/catalogue.yaml\n")]
    assert catalogues
    for n, catalogue in enumerate(catalogues):  # a catalogue, not a flow: it loads
        (tmp_path / f"catalogue{n}.yaml").write_text(catalogue)
        assert load_catalogue(tmp_path / f"catalogue{n}.yaml").items
    examples = [e for e in examples if e not in catalogues]
    (code,) = {
        c for t in texts for c in re.findall(r"```python\n(.*?)```", t, re.S) if "@action" in c
    }
    assert len(examples) >= 5
    # Examples that begin "# flows/NAME.yaml" are files of one folder, checked together; the
    # docs' templates.yaml goes beside every example.
    named = {m[1]: e for e in examples if (m := re.match(r"# flows/([\w.-]+)\.yaml\n", e))}
    templates = named.pop("templates")
    alone = [e for e in examples if e not in named.values() and e is not templates]
    groups = [{"example": e} for e in alone] + [named]
    assert len(named) >= 2
    for i, files in enumerate(groups):
        folder = tmp_path / f"example{i}"
        folder.mkdir()
        for name, text in files.items():
            (folder / f"{name}.yaml").write_text(text)
        (folder / "templates.yaml").write_text(templates)
        shutil.copytree(ROOT / "flows" / "data", folder / "data", dirs_exist_ok=True)
        shutil.copytree(DOCS_DATA, folder / "data", dirs_exist_ok=True)  # the docs' tables
        if any("action: create_order" in text for text in files.values()):
            (folder / "actions.py").write_text(code)
        assert validate_path(folder) == [], files
        entry = next(iter(files))
        assert load_flows(folder, entry).entry_flow.spec.name == entry
    assert "start: welcome" in examples[0]


def test_the_readme_links_the_flow_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    docs = (ROOT / "docs" / "flows.md").read_text()
    assert "](docs/flows.md" in readme
    for heading in ("## Typed answers", "## Actions: calling your code", "## Timers"):
        assert heading in docs


def test_the_readme_names_every_setting() -> None:
    """Every variable Settings reads appears in the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    source = (ROOT / "engine" / "settings.py").read_text()
    names = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', source)) - {
        "NORMAL",
        "FULL",
        "INFO",
        "DEBUG",
        "WARNING",
        "ERROR",
    }
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert missing == []


def test_the_docs_flow_test_example_passes(tmp_path: Path) -> None:
    """The flows test example in docs/flows.md runs against the typed-answers example."""
    from zoneinfo import ZoneInfo

    from engine.flowtests import run_tests

    text = (ROOT / "docs" / "flows.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)
    (test,) = [b for lang, b in blocks if not lang and b.startswith("flow: booking")]
    (flow,) = [e for e in re.findall(r"```yaml\n(.*?)```", text, re.S) if "start: qty" in e]
    (tmp_path / "tests").mkdir()
    (tmp_path / "booking.yaml").write_text(flow)
    (tmp_path / "tests" / "booking.yaml").write_text(test)
    lines: list[str] = []
    assert run_tests(tmp_path, None, ZoneInfo("UTC"), lines.append) == 0, lines
    assert lines[-1] == "1 passed, 0 failed"
