"""Conversation tests for flows: YAML files in `FLOWS_DIR/tests/`, run on the real engine.

    flow: support                     # the flow under test (default: the file's name)
    actions:                          # what actions give in these tests; none is really called
      create_order: {returns: {id: BP-1}}
      http: {fails: unavailable}
    tests:
      - name: a question answered from the FAQ
        steps:
          - say: hello
            expect: {text: Welcome, buttons: [Ask a question, Opening hours, Talk to a person]}
          - tap: question
          - wait: 10m
            expect: {text: Still there?}
          - action: order.pay               # the business's side meanwhile: an action called
            with: {number: "1001", amount: "50.00", reference: UTR-1}   # outside the chat
            expect: {result: {status: paid}}

Each test is a new contact on a fresh in-memory store, on a clock that only moves when a step
says `wait:`, so timers fire exactly when the test says. `python -m engine flows test` runs them
and prints, for each failure, the test's file:line, the step, and what differed; the pytest
plugin (adapters.pytest_flows) collects the same files as test items.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .actions import ActionContext, ActionFailed, Actions, Fn, to_value
from .clock import SkippableClock
from .engine import Engine, EngineConfig
from .errors import FlowError, Problem
from .events import ButtonReply, Content, Customer, ListReply, Location, Message, Text
from .flows import Flows, flow_files, load_flows
from .flows.data import plain
from .flows.source import SourceError, YList, YMap, decode, load
from .flows.values import Value, to_json, to_plain
from .memstore import MemoryStore
from .outbound import ButtonsMessage, ListMessage, MediaMessage, OutMessage
from .ports import Outgoing
from .settings import parse_duration

FOLDER = "tests"  # beside the flows: FLOWS_DIR/tests/*.yaml
START = "2026-01-05T10:00"  # a Monday morning, in TIMEZONE: the clock's start unless at: says
FILE_KEYS = ("flow", "at", "timezone", "actions", "tests")
CASE_KEYS = ("name", "contact", "at", "actions", "steps")
INPUTS = ("say", "tap", "location", "wait", "action")
EXPECT_KEYS = (
    "text",
    "no_text",
    "silent",
    "buttons",
    "rows",
    "state",
    "flow",
    "slots",
    "handoff",
    "action",
    "result",  # an action: step's: what its action gave (the keys named)
    "error",  # an action: step's: the kind of its ActionFailed
)
NUMBER = "15550000000"  # the business number the tests' contacts write to
MAX_WAIT = 400 * 86400.0  # the longest wait: a step may take


@dataclass(frozen=True, slots=True)
class Step:
    line: int
    kind: str  # one of INPUTS, or "" for a step that only expects
    value: Any
    expect: YMap | None


@dataclass(frozen=True, slots=True)
class Case:
    file: str
    line: int
    name: str
    flow: str
    start: str
    actions: dict[str, Any]
    contact: dict[str, str]
    steps: tuple[Step, ...]
    zone: str | None = None  # timezone: of the file (else TIMEZONE)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(slots=True)
class Failure:
    file: str
    line: int
    title: str
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(
            [f"{self.file}:{self.line}: {self.title}", *("  " + d for d in self.details)]
        )


# --- reading -----------------------------------------------------------------------------------


def test_files(path: Path) -> tuple[list[Path], str | None]:
    """The test files at `path`, and the one flow whose tests to run (None: all): a test file;
    a flow file (its tests); a flows folder (its tests/ sub-folder); or a tests/ folder."""
    if path.is_file():
        if path.parent.name == FOLDER:
            return [path], None
        path, only = path.parent / FOLDER, path.stem
    else:
        only = None
        path = path if path.name == FOLDER else path / FOLDER
    if not path.is_dir():
        return [], only
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return files, only


def flows_dir_of(file: Path) -> Path:
    return file.parent.parent if file.parent.name == FOLDER else file.parent


def read_cases(file: Path, flows: Flows | None = None) -> tuple[list[Case], list[Problem]]:
    """The tests of a file, and its problems; with `flows`, the flow and the actions it names
    are checked against them."""
    problems: list[Problem] = []
    name = str(file)

    def err(line: int, message: str) -> None:
        problems.append(Problem(name, line, message))

    try:
        doc, found = load(decode(file.read_bytes()))
    except OSError as e:
        return [], [Problem(name, 1, f"cannot read the tests: {e}")]
    except SourceError as e:
        return [], [Problem(name, e.line, e.message)]
    problems += [Problem(name, p.line, p.message) for p in found]
    if not isinstance(doc, YMap) or not isinstance(doc.get("tests"), YList) or not doc["tests"]:
        line = getattr(doc, "line", 1)
        return [], [*problems, Problem(name, line, "a test file has tests: a list of tests")]
    _keys(doc, FILE_KEYS, "test file", err)
    flow = doc.get("flow") or file.stem
    start = _moment(doc, err) or START
    zone = doc.get("timezone")
    if zone is not None:
        try:
            ZoneInfo(str(zone))
        except (ValueError, OSError, ZoneInfoNotFoundError):
            err(doc.line_of("timezone"), f"timezone: {zone!r} is not an IANA time zone name")
            zone = None
    actions = _actions(doc, err, flows)
    if flows is not None and flow not in flows.by_name:
        close = difflib.get_close_matches(str(flow), sorted(flows.by_name), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        err(doc.line_of("flow"), f"flow: no flow {flow!r} beside these tests{hint}")
    cases = []
    names: dict[str, int] = {}
    for i, raw in enumerate(doc["tests"]):
        line = doc["tests"].line_of(i)
        if not isinstance(raw, YMap):
            err(line, "a test is a mapping with name: and steps:")
            continue
        _keys(raw, CASE_KEYS, "test", err)
        title = str(raw.get("name") or f"test {i + 1}")
        if title in names:
            err(line, f"a test named {title!r} is already at line {names[title]}")
        names.setdefault(title, line)
        steps = _steps(raw, err)
        contact = raw["contact"] if isinstance(raw.get("contact"), YMap) else {}
        cases.append(
            Case(
                name,
                line,
                str(raw.get("name") or f"test {i + 1}"),
                str(flow),
                _moment(raw, err) or start,
                {**actions, **_actions(raw, err, flows)},
                {str(k): str(v) for k, v in contact.items()},
                tuple(steps),
                str(zone) if zone is not None else None,
            )
        )
    return cases, problems


def _moment(parent: YMap, err: Callable[[int, str], None]) -> str | None:
    """at: a date and time like 2026-12-07T10:00, from 2000 to 2199."""
    raw = parent.get("at")
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(str(raw))
        if not 2000 <= moment.year < 2200:
            raise ValueError("a year from 2000 to 2199")
    except ValueError as e:
        err(parent.line_of("at"), f"at: a date and time like 2026-12-07T10:00 ({e})")
        return None
    return str(raw)


def _keys(
    mapping: YMap, allowed: tuple[str, ...], what: str, err: Callable[[int, str], None]
) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            err(mapping.line_of(key), f"unknown key {key!r} in {what}{hint}")


def _actions(
    parent: YMap, err: Callable[[int, str], None], flows: Flows | None = None
) -> dict[str, Any]:
    raw = parent.get("actions")
    if raw is None:
        return {}
    if not isinstance(raw, YMap):
        err(
            parent.line_of("actions"),
            "actions: a mapping of action names to {returns: ...} or {fails: kind}",
        )
        return {}
    out: dict[str, Any] = {}
    for name, how in raw.items():
        if flows is not None and flows.actions.get(name) is None:
            known = flows.actions.names()
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            err(raw.line_of(name), f"actions: no action {name!r} in these flows{hint}")
            continue
        if (
            not isinstance(how, YMap)
            or len(how) != 1
            or next(iter(how)) not in ("returns", "fails")
        ):
            err(
                raw.line_of(name),
                f"actions: {name}: {{returns: a result}} or {{fails: an error kind}}",
            )
            continue
        out[name] = plain(dict(how))
    return out


def _steps(raw: YMap, err: Callable[[int, str], None]) -> list[Step]:
    items = raw.get("steps")
    if not isinstance(items, YList) or not items:
        err(raw.line, "steps: a list of steps (say:, tap:, location:, wait:, expect:)")
        return []
    out = []
    for i, item in enumerate(items):
        line = items.line_of(i)
        if not isinstance(item, YMap):
            err(line, "a step is a mapping like {say: hello, expect: {text: Hi}}")
            continue
        _keys(item, (*INPUTS, "with", "expect"), "step", err)
        kinds = [k for k in INPUTS if k in item]
        if len(kinds) > 1 or (not kinds and "expect" not in item):
            err(line, "a step does one of say:, tap:, location:, wait:, action: (and may expect:)")
            continue
        if "with" in item and "action" not in item:
            err(item.line_of("with"), "with: goes with action:")
            continue
        expect = item.get("expect")
        if expect is not None and not isinstance(expect, YMap):
            err(item.line_of("expect"), "expect: a mapping like {text: ..., state: ...}")
            expect = None
        if expect is not None:
            _keys(expect, EXPECT_KEYS, "expect", err)
        kind = kinds[0] if kinds else ""
        value = _input(kind, item, err)
        if value is _BAD:
            continue
        out.append(Step(line, kind, value, expect))
    return out


_BAD = object()  # a step's input that was reported as wrong


def _input(kind: str, item: YMap, err: Callable[[int, str], None]) -> Any:
    """A step's input, checked: seconds for wait:, (name, args) for action:, else as written."""
    value = item.get(kind) if kind else None
    if kind == "wait":
        try:
            value = parse_duration(str(value)[:40])
        except ValueError as e:
            err(item.line_of("wait"), f"wait: {e}")
            return _BAD
        if value > MAX_WAIT:
            err(item.line_of("wait"), "wait: at most 400d")
            return _BAD
    if kind == "action":
        given = item.get("with", {})
        if not isinstance(value, str) or not isinstance(given, dict):
            err(
                item.line_of("action"), "action: an action's name, with: its parameters (a mapping)"
            )
            return _BAD
        value = (value, plain(given))
    if kind in ("say", "tap") and not isinstance(value, str):
        err(item.line_of(kind), f"{kind}: the text the customer sends")
        return _BAD
    if kind == "location" and parse_location(str(value)) is None:
        err(
            item.line_of("location"),
            "location: LAT,LNG and an optional name, like 52.37,4.89 Home",
        )
        return _BAD
    return value


def parse_location(text: str) -> Location | None:
    """'52.37,4.89 Home': a shared place (chat's /location, a test's location:)."""
    coords, _, name = text.strip().partition(" ")
    lat, _, lng = coords.partition(",")
    try:
        latitude, longitude = float(lat), float(lng)
    except ValueError:
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    return Location(latitude, longitude, name=name.strip() or None)


# --- running -----------------------------------------------------------------------------------


class Recorder:
    """The test's sender: every message the bot sends, in order."""

    def __init__(self) -> None:
        self.sent: list[OutMessage] = []

    async def send(self, out: Outgoing) -> str:
        self.sent.append(out.message)
        return f"test.{len(self.sent)}"

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        """Read receipts are not part of a conversation test."""


def fake_actions(
    actions: Actions, given: Mapping[str, Any], calls: list[tuple[str, dict[str, Value]]]
) -> Actions:
    """Every action of the flows, answering as the test file says and recording its calls.
    A model's built-ins (llm.answer, llm.classify, llm.extract) answer only when the file says
    what they give; otherwise no model is configured and the flows take their non-LLM paths."""
    out = Actions(due=actions.due)  # packs' due records are handled for real
    for name, definition in actions.by_name.items():
        if name.startswith("llm.") and name not in given:
            out.add(replace(definition, fn=None))
            continue
        if definition.in_tests and name not in given and definition.fn is not None:
            out.add(replace(definition, fn=_recorded(name, definition.fn, calls)))
            continue
        out.add(replace(definition, fn=_fake(name, given.get(name), calls), takes_context=False))
    return out


def _recorded(name: str, fn: Fn, calls: list[tuple[str, dict[str, Value]]]) -> Fn:
    """A pack's action, run for real (on the test's store), its calls recorded."""

    async def real(ctx: ActionContext, **args: Value) -> Any:
        calls.append((name, args))
        result = fn(ctx, **args)
        return await result if inspect.isawaitable(result) else result

    return real


def _fake(name: str, how: Any, calls: list[tuple[str, dict[str, Value]]]) -> Fn:
    async def fake(**args: Value) -> Any:
        calls.append((name, args))
        if how is None:
            raise ActionFailed(
                f"the test declares no result for action {name!r} (actions:)", "error"
            )
        if "fails" in how:
            raise ActionFailed(f"{name} fails, as the test says", str(how["fails"]))
        return how["returns"]

    return fake


class Run:
    """One test on its own engine: a new contact, a fresh store, and a clock that starts at the
    test's `at:` and jumps ahead only when a step says `wait:`."""

    def __init__(self, flows: Flows, case: Case, zone: ZoneInfo) -> None:
        self.case = case
        self.calls: list[tuple[str, dict[str, Value]]] = []
        self.flows = replace(
            flows, entry=case.flow, actions=fake_actions(flows.actions, case.actions, self.calls)
        )
        start = datetime.fromisoformat(case.start)
        if start.tzinfo is None:
            start = start.replace(tzinfo=zone)
        self.clock = SkippableClock(start=start.timestamp())
        self.sender = Recorder()
        self.engine = Engine(
            store=MemoryStore(),
            sender=self.sender,
            flows=self.flows,
            # Due records (payment reminders) are looked for at their due times (the engine
            # hears of every write here): no periodic look to step through on long waits.
            config=EngineConfig(send_concurrency=1, due_poll=MAX_WAIT),
            clock=self.clock,
        )
        phone = case.contact.get("phone", "15550001234")
        self.customer = Customer(number=NUMBER, phone=phone, name=case.contact.get("name", "Ana"))
        self.key = f"{NUMBER}:{phone}"
        self.count = 0
        self.result: Value = None  # what the last action: step's action gave
        self.error: tuple[str, str] | None = None  # or its failure: (kind, message)
        self.offered: list[tuple[str, str, str]] = []  # (kind, id, title) of the last options
        self.ever: set[tuple[str, str]] = set()  # (id, title) of every option offered so far

    async def settle(self) -> None:
        for _ in range(100):
            await self.engine.actors.wait_idle()
            await self.engine.delivery.wait_empty()
            if self.engine.calls.in_flight == 0 and self.engine.due.idle:
                await asyncio.sleep(0)
                if (
                    self.engine.calls.in_flight == 0
                    and self.engine.actors.depth == 0
                    and self.engine.due.idle
                ):
                    return
            await asyncio.sleep(0.001)

    async def step(self, step: Step) -> list[OutMessage]:
        before = len(self.sender.sent)
        if step.kind == "wait":
            await self.clock.advance(float(step.value), self.settle)
        elif step.kind == "action":
            await self.act(*step.value)
        elif step.kind:
            self.count += 1
            message = Message(
                id=f"test.{self.count}",
                timestamp=int(self.clock.now()),
                customer=self.customer,
                content=self.content(step),
            )
            await self.engine.ingest([message])
        await self.settle()
        replies = self.sender.sent[before:]
        for m in replies:
            if isinstance(m, ButtonsMessage):
                self.offered = [("button", b.id, b.title) for b in m.buttons]
            elif isinstance(m, ListMessage):
                self.offered = [("row", r.id, r.title) for s in m.sections for r in s.rows]
            self.ever.update(o[1:] for o in self.offered)
        return replies

    async def act(self, name: str, args: dict[str, Value]) -> None:
        """An action called from the business's side, outside the conversation (a payment
        the admin API records): its result or failure is kept for expect: result: / error:."""
        self.result, self.error = None, None
        definition = self.flows.actions.get(name)
        if definition is None:
            self.error = ("unknown", f"no action {name!r}")
            return
        wrong = definition.problems_with(args)
        if wrong:
            self.error = ("with", "; ".join(wrong))
            return
        self.count += 1
        now = self.clock.now()
        ctx = ActionContext(
            key=f"test.action.{self.count}",
            contact=self.key,
            flow=self.case.flow,
            state="",
            deadline=now + 60.0,
            now=now,
            records=self.engine.records,
        )
        try:
            self.result = to_value(await definition.call(ctx, args))
        except ActionFailed as e:
            self.error = (e.kind, e.message)
        except Exception as e:  # the action's own bug: this step fails, the other tests run
            self.error = ("error", repr(e))

    def real(self, name: str) -> bool:
        """A pack's action that runs for real in this test."""
        definition = self.flows.actions.get(name)
        return definition is not None and definition.in_tests and name not in self.case.actions

    def tappable(self, what: str) -> bool:
        """A tap of a button or row some message of this test offered (an old one too: a
        customer may tap a button further up the chat)."""
        return any(what in pair for pair in self.ever)

    def content(self, step: Step) -> Content:
        if step.kind == "location":
            place = parse_location(str(step.value))
            assert place is not None
            return place
        if step.kind == "tap":
            ident = str(step.value)
            for kind, option, title in self.offered:
                if ident in (option, title):
                    return (
                        ButtonReply(option, title) if kind == "button" else ListReply(option, title)
                    )
            for option, title in sorted(self.ever):  # a button of an earlier message
                if ident in (option, title):
                    return ButtonReply(option, title)
            return ButtonReply(ident, ident)
        return Text(str(step.value))


async def run_case(flows: Flows, case: Case, zone: ZoneInfo) -> Failure | None:
    """One test; `zone`: the time zone the flows were loaded with (a file's timezone:)."""
    if case.flow not in flows.by_name:
        known = ", ".join(sorted(flows.by_name))
        return Failure(case.file, case.line, f"{case.name}: no flow {case.flow!r} (flows: {known})")
    run = Run(flows, case, zone)
    await run.engine.start()
    try:
        for n, step in enumerate(case.steps, start=1):
            if step.kind == "tap" and not run.tappable(str(step.value)):
                offered = ", ".join(f"{t} ({i})" for _k, i, t in run.offered) or "nothing"
                why = f"no message of this test offered {step.value!r}; the last offered: {offered}"
                return Failure(
                    case.file, step.line, f"{case.name}, step {n} (tap: {step.value})", [why]
                )
            replies = await run.step(step)
            details = [
                f"action {name!r} was called, and the test declares no result for it"
                f" (actions: {{{name}: {{returns: ...}}}} or {{fails: kind}})"
                for name in dict.fromkeys(n for n, _a in run.calls if n not in case.actions)
                if not run.real(name)
            ]
            details += _missing_files(replies)
            if step.kind == "action" and run.error and "error" not in (step.expect or {}):
                details.append(f"the action failed ({run.error[0]}): {run.error[1]}")
            if step.expect is not None and not details:
                details = await check(run, step.expect, replies)
            if details:
                what = f"{step.kind}: {step.value}" if step.kind else "expect"
                if step.kind == "action":
                    what = f"action: {step.value[0]}"
                if step.kind == "wait":
                    what = f"wait: {_seconds(float(step.value))}"
                return Failure(case.file, step.line, f"{case.name}, step {n} ({what})", details)
    finally:
        await run.engine.close()
    return None


def _missing_files(replies: list[OutMessage]) -> list[str]:
    """A file the flow sends must be in MEDIA_DIR when it is sent (the sender uploads it)."""
    return [
        f"the bot sent {m.file!r}, which is not a file in MEDIA_DIR"
        for m in replies
        if isinstance(m, MediaMessage) and m.file and not (_media() / m.file).is_file()
    ]


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:.0f}{unit}"
    return f"{value:.0f}s"


async def check(run: Run, expect: YMap, replies: list[OutMessage]) -> list[str]:
    """What differs from `expect`, in words and diffs; empty when all of it holds."""
    out = _said(expect, replies)
    for key, kind in (("buttons", ButtonsMessage), ("rows", ListMessage)):
        if key in expect:
            out += _offered(key, expect[key], _options(replies, kind))
    known = run.engine.directory.lookup(NUMBER, run.customer.phone or "")
    view = await run.engine.view(run.key, limit=0) if known else {}
    out += _where(expect, view)
    if "slots" in expect:
        out += _slots(expect["slots"], view.get("slots") or {})
    if "action" in expect:
        out += _action(expect["action"], run.calls)
    if "result" in expect:
        if run.error is not None:
            out.append(f"the action failed ({run.error[0]}): {run.error[1]}")
        elif not isinstance(run.result, dict):
            out.append(f"the action gave {to_json(run.result)}, not a mapping")
        else:
            out += _slots(expect["result"], run.result, "result")
    if "error" in expect:
        got = run.error[0] if run.error else None
        if got != str(expect["error"]):
            out.append(
                f"expected the action to fail with {expect['error']!r};"
                + (f" it failed with {got!r}" if got else f" it gave {to_json(run.result)}")
            )
    return out


def _texts(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _said(expect: YMap, replies: list[OutMessage]) -> list[str]:
    out: list[str] = []
    said = [_shown(m) for m in replies]
    for text in _texts(expect["text"]) if "text" in expect else ():
        if not any(text in s for s in said):
            out.append(f"expected a reply containing {text!r}; the bot said:")
            out += [f"  | {line}" for s in said for line in s.splitlines()] or ["  (nothing)"]
    for text in _texts(expect["no_text"]) if "no_text" in expect else ():
        if any(text in s for s in said):
            out.append(f"expected no reply containing {text!r}")
    if expect.get("silent") is True and replies:
        out.append(f"expected no reply; the bot sent {len(replies)} message(s)")
    return out


def _offered(key: str, raw: Any, offered: list[tuple[str, str]]) -> list[str]:
    wanted = _texts(raw)
    got = [title for _id, title in offered]
    if wanted in (got, [i for i, _t in offered]):
        return []
    return [
        f"{key} differ (- expected, + offered):",
        *("  " + d for d in difflib.ndiff(wanted, got) if d[:1] in "-+ "),
    ]


def _where(expect: YMap, view: dict[str, Any]) -> list[str]:
    out = []
    for key in ("state", "flow"):
        if key in expect and str(expect[key]) != str(view.get(key)):
            out.append(
                f"expected {key} {str(expect[key])!r}, the conversation is at {view.get(key)!r}"
            )
    if "handoff" in expect and bool(expect["handoff"]) != bool(view.get("handoff")):
        out.append(f"expected handoff {expect['handoff']}, it is {bool(view.get('handoff'))}")
    return out


def _shown(m: OutMessage) -> str:
    text = m.body
    if isinstance(m, ButtonsMessage):
        text += "".join(f"\n[{b.title}]" for b in m.buttons)
    elif isinstance(m, ListMessage):
        text += "".join(f"\n[{r.title}]" for s in m.sections for r in s.rows)
    return text


def _options(replies: list[OutMessage], kind: type) -> list[tuple[str, str]]:
    for m in reversed(replies):
        if isinstance(m, ButtonsMessage) and kind is ButtonsMessage:
            return [(b.id, b.title) for b in m.buttons]
        if isinstance(m, ListMessage) and kind is ListMessage:
            return [(r.id, r.title) for s in m.sections for r in s.rows]
    return []


def _slots(wanted: Any, got: dict[str, Any], what: str = "slot") -> list[str]:
    if not isinstance(wanted, dict):
        return [f"{what}s: a mapping of names to values"]
    out = []
    for slot, value in wanted.items():
        have = got.get(slot)
        if not _same(value, have):
            out.append(f"{what} {slot} differs (- expected, + has):")
            out += [
                "  " + d
                for d in difflib.ndiff(_lines(_plain(value)), _lines(have))
                if d[:1] in "-+ "
            ]
    return out


def _same(wanted: Any, got: Any) -> bool:
    """A test file's value against a slot as the admin API shows it: numbers equal as numbers
    (5, "5" and 5.00 are one number), yes/no only as yes/no, records and lists in depth."""
    if isinstance(wanted, dict) or isinstance(got, dict):
        return (
            isinstance(wanted, dict)
            and isinstance(got, dict)
            and wanted.keys() == got.keys()
            and all(_same(wanted[k], got[k]) for k in wanted)
        )
    if isinstance(wanted, list) or isinstance(got, list):
        return (
            isinstance(wanted, list)
            and isinstance(got, list)
            and len(wanted) == len(got)
            and all(_same(a, b) for a, b in zip(wanted, got, strict=True))
        )
    if isinstance(wanted, bool) or isinstance(got, bool) or wanted is None or got is None:
        return wanted is got or (wanted == got and type(wanted) is type(got))
    a, b = _decimal(wanted), _decimal(got)
    if a is not None and b is not None:
        return a == b
    return str(wanted) == str(got)


def _decimal(value: Any) -> Decimal | None:
    try:
        number = Decimal(str(value).strip())
    except ArithmeticError:
        return None
    return number if number.is_finite() else None


def _plain(value: Any) -> Any:
    """A test file's value as the admin API shows slots: numbers as text, nothing as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    return str(value)


def _lines(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}: {v!r}" for k, v in value.items()]
    if isinstance(value, list):
        return [repr(v) for v in value]
    return [repr(value)]


def _action(wanted: Any, calls: list[tuple[str, dict[str, Value]]]) -> list[str]:
    name = (
        wanted
        if isinstance(wanted, str)
        else wanted.get("name")
        if isinstance(wanted, dict)
        else None
    )
    args = wanted.get("with", {}) if isinstance(wanted, dict) else {}
    made = [(n, {k: to_plain(to_json(v)) for k, v in a.items()}) for n, a in calls if n == name]
    if not made:
        names = ", ".join(n for n, _a in calls) or "none"
        return [f"expected a call of action {name!r}; calls so far: {names}"]
    last = made[-1][1]
    out = []
    for key, value in args.items():
        if _plain(value) != last.get(key):
            out.append(f"action {name}: {key} is {last.get(key)!r}, expected {_plain(value)!r}")
    return out


# --- the command -------------------------------------------------------------------------------


def run_tests(
    path: Path,
    provided: Mapping[str, Fn] | None,
    zone: ZoneInfo,
    out: Callable[[str], None] = print,
) -> int:
    """`python -m engine flows test [PATH]`: 0 when every test passes, 1 otherwise."""
    if not path.exists():
        out(f"{path}: no such file or folder")
        return 1
    files, only = test_files(path)
    if not files:
        out(f"{path}: no flow tests (write them in {FOLDER}/*.yaml beside the flows)")
        return 1
    passed = failed = 0
    loaded: dict[tuple[Path, str], Flows | FlowError] = {}
    for file in files:
        flows, zone_here = flows_for(file, zone, loaded, provided)
        if isinstance(flows, FlowError):
            for p in flows.problems:
                out(str(p))
            failed += 1
            continue
        cases, problems = read_cases(file, flows)
        for p in problems:
            out(str(p))
        if problems:
            failed += len(problems)
            continue
        for case in cases:
            if only is not None and case.flow != only:
                continue
            failure = asyncio.run(run_case(flows, case, zone_here))
            if failure is None:
                passed += 1
                out(f"ok   {case.where} {case.name}")
            else:
                failed += 1
                out(f"FAIL {failure}")
    out(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


def flows_for(
    file: Path,
    zone: ZoneInfo,
    cache: dict[tuple[Path, str], Flows | FlowError],
    provided: Mapping[str, Fn] | None = None,
) -> tuple[Flows | FlowError, ZoneInfo]:
    """The flows a test file tests, loaded once per folder and time zone (its timezone:, or
    `zone`), and that zone."""
    cases, _problems = read_cases(file)
    here = ZoneInfo(cases[0].zone) if cases and cases[0].zone else zone
    folder = flows_dir_of(file)
    key = (folder, str(here))
    if key not in cache:
        try:
            cache[key] = load_flows(folder, _any_flow(folder), provided, here, _media())
        except FlowError as e:
            cache[key] = e
    return cache[key], here


_MEDIA: list[tempfile.TemporaryDirectory[str]] = []


def _media() -> Path:
    """A MEDIA_DIR of this process's tests (the invoices packs write), removed at exit."""
    if not _MEDIA:
        _MEDIA.append(tempfile.TemporaryDirectory(prefix="flows-test-media-"))
    return Path(_MEDIA[0].name)


def _any_flow(folder: Path) -> str:
    names = [p.stem for p in flow_files(folder)]
    return names[0] if names else "support"
