"""The README tells the truth: its flow example validates and runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from engine.flows import load_flows, validate_path
from tests.support import ROOT


def test_the_flow_in_the_readme_is_valid(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (tmp_path / "pizza.yaml").write_text(example)
    shutil.copytree(ROOT / "flows" / "data", tmp_path / "data")
    assert validate_path(tmp_path / "pizza.yaml") == []
    assert load_flows(tmp_path, "pizza").entry_flow.spec.start == "welcome"


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
