"""Flows: the designer's YAML language, its validator and its compiled, shared state machines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from ..actions import Actions, Fn, load_actions
from ..errors import FlowError, Problem, errors_in
from .links import check_links
from .machine import IDLE, KEEP, UTC, ActionRequest, Effects, Flow, TimerPlan
from .reader import peek_outputs, read_flow
from .spec import FlowSpec
from .templates import FILE as TEMPLATES_FILE
from .templates import Template, read_templates

__all__ = [
    "IDLE",
    "KEEP",
    "ActionRequest",
    "Effects",
    "Flow",
    "FlowSpec",
    "Flows",
    "Template",
    "TimerPlan",
    "load_flows",
    "validate_path",
]


def flow_files(path: Path) -> list[Path]:
    """A flow file, or every *.yaml directly inside a folder (sub-folders hold data and tests;
    templates.yaml holds the approved templates)."""
    if path.is_dir():
        return sorted(
            p
            for p in path.iterdir()
            if p.suffix in (".yaml", ".yml") and p.is_file() and p.name != TEMPLATES_FILE
        )
    return [path]


def validate_path(path: Path, provided: Mapping[str, Fn] | None = None) -> list[Problem]:
    """Every problem in the flows at `path` (and the actions.py beside them); an empty list
    means they are all valid."""
    if not path.exists():
        return [Problem(str(path), 0, "no such file or folder")]
    if path.name == TEMPLATES_FILE and path.is_file():
        return read_templates(path.parent)[1]
    return _validate_flows(path, provided)


def _validate_flows(path: Path, provided: Mapping[str, Fn] | None) -> list[Problem]:
    files = flow_files(path)
    if not files:
        return [Problem(str(path), 0, "no flow files (*.yaml) here")]
    folder = path if path.is_dir() else path.parent
    actions, problems = load_actions(folder, provided)
    templates, found_templates = read_templates(folder)
    if path.is_dir():
        problems += found_templates
        problems += actions.missing_templates(templates, str(folder / TEMPLATES_FILE))
    outputs = peek_outputs(folder)
    specs: dict[str, FlowSpec] = {}
    for file in files:
        # Kept with its errors, so that calls across flows are checked in the same round.
        spec, found = read_flow(file, actions, outputs, keep=True, templates=templates)
        problems.extend(found)
        if spec is not None:
            specs[spec.name] = spec
            if not errors_in(found):
                try:
                    Flow(spec)
                except Exception as e:  # the library refused what our checks let through
                    problems.append(Problem(str(file), 1, f"cannot build the state machine: {e}"))
    others = {f.stem for f in flow_files(folder)}
    if not path.is_dir():  # one file: the flows it calls are read, their problems not shown
        for file in flow_files(folder):
            if file.stem not in specs:
                spec, _found = read_flow(file, actions, outputs, keep=True, templates=templates)
                if spec is not None:
                    specs[spec.name] = spec
    mine = {str(f) for f in files}
    problems += [p for p in check_links(specs, others) if p.file in mine]
    return problems


@dataclass(frozen=True, slots=True)
class Flows:
    """Every compiled flow by name, and the one new contacts start in."""

    by_name: dict[str, Flow]
    entry: str
    actions: Actions = field(default_factory=Actions)
    warnings: tuple[Problem, ...] = ()  # legal but almost always wrong: logged at start
    templates: dict[str, Template] = field(default_factory=dict)  # templates.yaml

    def get(self, name: str) -> Flow | None:
        return self.by_name.get(name)

    @property
    def entry_flow(self) -> Flow:
        return self.by_name[self.entry]

    @property
    def live_instances(self) -> int:
        return sum(f.live_instances for f in self.by_name.values())


def load_flows(
    folder: Path,
    entry: str,
    provided: Mapping[str, Fn] | None = None,
    zone: ZoneInfo | None = None,
    media: Path | None = None,
) -> Flows:
    """Load and compile every flow in `folder` and the actions beside them (`provided`: the
    built-in actions this process implements; `zone`: the business's time zone, in which
    typed answers like "tomorrow 5pm" are read; `media`: MEDIA_DIR, where action packs may
    write the files flows send); raise FlowError listing every problem."""
    if not folder.is_dir():
        raise FlowError([Problem(str(folder), 0, "FLOWS_DIR is not a folder")])
    actions, problems = load_actions(folder, provided, zone, media)
    templates, found_templates = read_templates(folder)
    problems += found_templates
    problems += actions.missing_templates(templates, str(folder / TEMPLATES_FILE))
    flows: dict[str, Flow] = {}
    outputs = peek_outputs(folder)
    files = flow_files(folder)
    specs: dict[str, FlowSpec] = {}
    for file in files:
        spec, found = read_flow(file, actions, outputs, keep=True, templates=templates)
        problems.extend(found)
        if spec is not None:
            specs[spec.name] = spec
        if spec is not None and not errors_in(found):
            try:
                flows[spec.name] = Flow(spec, zone or UTC)
            except Exception as e:  # the library refused what our checks let through
                problems.append(Problem(str(file), 1, f"cannot build the state machine: {e}"))
    problems += check_links(specs, (f.stem for f in files))
    warnings = [p for p in problems if p.warning]
    problems = errors_in(problems)
    if not problems and entry not in flows:
        problems.append(Problem(str(folder), 0, f"ENTRY_FLOW {entry!r}: no {entry}.yaml here"))
    if problems:
        raise FlowError(problems)
    return Flows(flows, entry, actions, tuple(warnings), templates)
