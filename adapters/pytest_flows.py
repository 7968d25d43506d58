"""pytest collects flow tests: each test in `<flows>/tests/*.yaml` is a test item, run on the
real engine as `python -m engine flows test` runs it (registered as a pytest11 entry point, so
installing the engine is enough; put the flows folder in pytest's testpaths)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.errors import FlowError
from engine.flows import Flows
from engine.flowtests import FOLDER, Case, flows_for, read_cases, run_case

_loaded: dict[tuple[Path, str], Flows | FlowError] = {}


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.File | None:
    if file_path.suffix not in (".yaml", ".yml") or file_path.parent.name != FOLDER:
        return None
    folder = file_path.parent.parent
    if not any(p.suffix in (".yaml", ".yml") for p in folder.iterdir() if p.is_file()):
        return None  # a tests/ folder that is not beside flows
    return FlowTestFile.from_parent(parent, path=file_path)


class FlowTestFile(pytest.File):
    def collect(self) -> Any:
        default = ZoneInfo(os.environ.get("TIMEZONE", "").strip() or "UTC")
        flows, zone = flows_for(self.path, default, _loaded)
        if isinstance(flows, FlowError):  # one failing item, not a halt of the whole session
            yield FlowFileProblem.from_parent(self, name="flows", problems=str(flows))
            return
        cases, problems = read_cases(self.path, flows)
        if problems:
            text = "\n".join(str(p) for p in problems)
            yield FlowFileProblem.from_parent(self, name="test file", problems=text)
            return
        for case in cases:
            yield FlowTestItem.from_parent(self, name=case.name, case=case, flows=flows, zone=zone)


class FlowTestItem(pytest.Item):
    def __init__(self, *, case: Case, flows: Flows, zone: ZoneInfo, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case, self.flows, self.zone = case, flows, zone

    def runtest(self) -> None:
        failure = asyncio.run(run_case(self.flows, self.case, self.zone))
        if failure is not None:
            raise FlowTestError(str(failure))

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        if isinstance(excinfo.value, FlowTestError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.case.line - 1, f"{self.path.name}: {self.case.name}"


class FlowFileProblem(pytest.Item):
    """A test file (or the flows it tests) that cannot be read: it fails, the others run."""

    def __init__(self, *, problems: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.problems = problems

    def runtest(self) -> None:
        raise FlowTestError(self.problems)

    def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
        return self.problems

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: {self.name}"


class FlowTestError(Exception):
    """A flow test that failed: its message is the file:line and what differed."""
