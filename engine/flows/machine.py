"""Compiling a FlowSpec into a python-statemachine class, and stepping it.

Each designer state becomes a `State` whose id is generated (`s0`, `s1`, ...) and whose value is
the designer's name, so names like `send`, `model` or `ask name` cannot break the machine. Every
waiting state gets the transitions of its branches, then the flow's `anywhere:` branches, then
its re-prompt ladder; conditions and actions are plain closures that read the `Step` passed to
`send()` and append effects to it. They never do I/O.

A machine instance is expensive (milliseconds and ~170 KiB for a 20-state flow), so a `Flow`
owns exactly one, shared by every conversation: before each `send()` the conversation's state
is put on the instance's model, and afterwards read back. `send()` is synchronous, so two
conversations can never interleave inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import regex
from statemachine.engines.async_ import AsyncEngine
from statemachine.io import create_machine_class_from_definition

from ..events import Audio, Document, Image, Location, Message, Sticker, Video, choice_of
from ..outbound import (
    LIMITS,
    Button,
    ButtonsMessage,
    FreeForm,
    ListMessage,
    LocationMessage,
    MediaMessage,
    OutMessage,
    ReactionMessage,
    Row,
    Section,
    TemplateMessage,
    TextMessage,
    fit,
)
from .expr import Evaluator, Expr, ExprError, parse_cached
from .spec import (
    ActionCall,
    Arg,
    Branch,
    FlowSpec,
    Reprompt,
    Route,
    Rows,
    Say,
    SetValue,
    StateSpec,
    SubflowCall,
    TemplateUse,
    Timeout,
    offered_says,
    prompt_of,
)
from .text import Faq, FaqEntry, Keywords, normalize, render, words
from .types import Bounds, describe, read
from .values import Value

log = logging.getLogger(__name__)

UTC = ZoneInfo("UTC")
IDLE = "_idle"  # the value of the machine's initial state; designer names cannot start with '_'
MEDIA = frozenset({"image", "audio", "video", "document", "sticker"})
REPLIES = frozenset({"button_reply", "list_reply", "template_button"})
REGEX_WINDOW = 1024  # characters of a message that a flow's regex conditions look at
REGEX_TIMEOUT = 0.05  # seconds one search may take; a pattern that backtracks past it fails


class ConversationView(Protocol):
    """What a step may read and change of a conversation (the engine's record satisfies it)."""

    state: str | None
    slots: dict[str, Value]
    misses: int
    name: str | None
    phone: str | None


@dataclass(frozen=True, slots=True)
class TimerPlan:
    """Arm the conversation's flow timer: rung `rung` of its step, `delay` seconds from now."""

    rung: int
    delay: float


KEEP = TimerPlan(-1, 0.0)  # leave the timer as it is (a message during a delay)


@dataclass(frozen=True, slots=True)
class ActionRequest:
    """Call action `name` with `args` (slot values), giving it `within` seconds."""

    name: str
    args: dict[str, Value]
    within: float


@dataclass(frozen=True, slots=True)
class SubflowRequest:
    """Continue in flow `flow`, its inputs `args`: a call that comes back when it ends (to the
    step's then:, or with `resume` to the step the customer was at), or a jump."""

    flow: str
    args: dict[str, Value]
    save: tuple[tuple[str, str], ...] | None = None
    resume: bool = False
    jump: bool = False


@dataclass(slots=True)
class Effects:
    """What one step decided: messages to send, in order, whether a person takes over, and the
    conversation's flow timer afterwards (None: no timer; KEEP: unchanged)."""

    messages: list[OutMessage] = field(default_factory=list)
    quotes: set[int] = field(default_factory=set)  # messages that quote the customer's message
    handoff: bool = False
    reprompts: int = 0
    split: int = 0
    shortened: int = 0
    timer: TimerPlan | None = None
    action: ActionRequest | None = None  # the step entered calls business code
    call: SubflowRequest | None = None  # the step continues in another flow
    models: dict[int, str] = field(default_factory=dict)  # messages a model wrote, by index
    llm_skipped: str | None = None  # a model's step took its other path: why (budget ...)

    def add(self, later: Effects) -> None:
        """What a later step in the same turn (another flow's) decided, after this one."""
        self.quotes |= {len(self.messages) + i for i in later.quotes}
        self.models.update({len(self.messages) + i: m for i, m in later.models.items()})
        self.llm_skipped = self.llm_skipped or later.llm_skipped
        self.messages.extend(later.messages)
        self.handoff = self.handoff or later.handoff
        self.reprompts += later.reprompts
        self.split += later.split
        self.shortened += later.shortened
        self.timer = later.timer
        self.action = later.action
        self.call = later.call


class Step:
    """The argument every condition and action receives."""

    __slots__ = (
        "choice",
        "convo",
        "data",
        "effects",
        "entered",
        "evaluate",
        "faq_hit",
        "found",
        "kind",
        "match",
        "message",
        "model",
        "norm",
        "padded",
        "raw",
        "reply",
        "result",
        "rung",
        "skipped",
        "stayed_rung",
        "typed",
        "understood",
    )

    def __init__(
        self,
        convo: Any,
        message: Message | None,
        evaluate: Evaluator | None,
        data: dict[str, Value] | None = None,
    ) -> None:
        self.convo = convo
        self.data = data or {}
        self.message = message
        self.evaluate = evaluate
        self.effects = Effects()
        self.raw = message.text.strip() if message is not None else ""
        self.norm = normalize(self.raw)
        self.padded = words(self.raw) if self.raw else " "
        self.choice = choice_of(message.content) if message is not None else None
        self.kind = message.content.kind if message is not None else ""
        self.match: Any = None
        self.faq_hit: FaqEntry | None = None
        self.rung = 0  # the timeout rung that fired (event "timeout")
        self.stayed_rung: int | None = None  # a rung without go: ran; the step keeps waiting
        self.entered = False  # some step was entered (not only a branch that stays)
        self.result: dict[str, Value] = {}  # event "done"/"error": the slots the call fills
        self.typed: Any = None  # what a type: branch read from the message
        self.found = False  # event "done" of an answer: step: the documents held the answer
        self.reply = ""  # ... and the answer
        self.model: str | None = None  # ... and the model that gave it
        self.skipped = False  # a model's step entered when no model may be asked
        self.understood = False  # the message again, with the choice a model picked

    @property
    def llm_block(self) -> str | None:
        """Why no model may be asked for this conversation now, or None."""
        return getattr(self.convo, "llm_block", "unavailable")

    def values(self) -> dict[str, Value]:
        c = self.convo
        return {**self.data, **c.slots, "name": c.name, "phone": c.phone, "text": self.raw}

    def compute(self, expr: Expr | str) -> Value:
        assert self.evaluate is not None
        if isinstance(expr, str):
            expr = parse_cached(expr)
        return self.evaluate(expr, self.values())

    def test(self, expr: Expr) -> bool:
        """A condition that cannot be computed at run time (text where a number was expected)
        is false, and logged: the conversation keeps its place instead of starting over."""
        try:
            return bool(self.compute(expr))
        except ExprError as e:
            self._expression_failed(expr.source, e)
            return False

    def render(self, template: str) -> str:
        return render(template, self.values(), self._shown)

    def _shown(self, source: str) -> Value:
        """{= ...} inside a message: one that cannot be computed shows as nothing, and is
        logged, rather than taking the customer back to the start."""
        try:
            return self.compute(source)
        except ExprError as e:
            self._expression_failed(source, e)
            return ""

    def _expression_failed(
        self, source: str, error: ExprError, then: str = "taken as empty"
    ) -> None:
        log.warning(
            "flow %s, step %r: %.100r could not be computed (%s); %s",
            getattr(self.convo, "flow", "?"),
            self.convo.state,
            source.strip(),
            error,
            then,
        )

    def assign(self, slot: str, value: SetValue) -> None:
        """set: a slot. A value that cannot be computed at run time leaves the slot as it was
        (a cart stays the cart), and is logged."""
        if isinstance(value, Expr):
            try:
                self.convo.slots[slot] = self.compute(value)
            except ExprError as e:
                self._expression_failed(value.source, e, "the slot keeps its value")
        else:
            self.convo.slots[slot] = self.render(value)

    def argument(self, arg: Arg) -> Value:
        """An action parameter's value: expressions computed, templates filled, in depth. One
        that cannot be computed at run time is nothing (None), and logged."""
        if isinstance(arg, Expr):
            try:
                return self.compute(arg)
            except ExprError as e:
                self._expression_failed(arg.source, e)
                return None
        if isinstance(arg, str):
            return self.render(arg)
        if isinstance(arg, dict):
            return {k: self.argument(v) for k, v in arg.items()}
        if isinstance(arg, list):
            return [self.argument(v) for v in arg]
        return arg

    def say(self, say: Say) -> None:
        message = build_message(say, self)
        if message is None or not _sendable(message, self):
            return
        fitted = fit(message)
        if say.quote and self.message is not None:
            self.effects.quotes.add(len(self.effects.messages))
        self.effects.messages.extend(fitted.messages)
        self.effects.split += fitted.split
        self.effects.shortened += fitted.shortened

    def say_model(self, text: str, model: str | None) -> None:
        """A model's answer, split where WhatsApp needs it (never inside a word)."""
        fitted = fit(TextMessage(text))
        start = len(self.effects.messages)
        self.effects.messages.extend(fitted.messages)
        if model:
            for i in range(start, len(self.effects.messages)):
                self.effects.models[i] = model
        self.effects.split += fitted.split
        self.effects.shortened += fitted.shortened

    def saved(self) -> Value:
        """What `save:` keeps of the message: the whole place or media, or the text."""
        content = self.message.content if self.message is not None else None
        if isinstance(content, Location):
            return {
                "latitude": Decimal(str(content.latitude)),
                "longitude": Decimal(str(content.longitude)),
                "name": content.name,
                "address": content.address,
            }
        if isinstance(content, Image | Video | Document | Audio | Sticker):
            return {
                "kind": content.kind,
                "id": content.media_id,
                "mime_type": content.mime_type,
                "caption": getattr(content, "caption", None),
            }
        return self.raw


def _sendable(message: OutMessage, step: Step) -> bool:
    """A location with coordinates that are not numbers, or a reaction with nothing to react
    to (a timer's step), cannot be sent: it is left out and logged, the rest goes."""
    why = None
    if isinstance(message, LocationMessage):
        try:
            lat, lon = Decimal(message.latitude), Decimal(message.longitude)
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                why = "coordinates out of range"
        except ArithmeticError:
            why = f"coordinates {message.latitude!r}, {message.longitude!r} are not numbers"
    elif isinstance(message, ReactionMessage) and not message.message_id:
        why = "a reaction needs a customer's message to react to"
    if why is None:
        return True
    log.warning(
        "flow %s, step %r: message left out: %s",
        getattr(step.convo, "flow", "?"),
        step.convo.state,
        why,
    )
    return False


def build_message(say: Say, step: Step) -> OutMessage:
    if say.template is not None and say.kind == "template":
        return fill_template(say.template, step)
    message = _free_form(say, step)
    if say.template is not None:
        return replace(message, fallback=fill_template(say.template, step))
    return message


def fill_template(use: TemplateUse, step: Step) -> TemplateMessage:
    """The template with the flow's values rendered in (the use was checked at load)."""
    values: list[str] | dict[str, str] = (
        {k: step.render(v) for k, v in use.named}
        if use.named
        else [step.render(v) for v in use.params]
    )
    header = step.render(use.header) if use.header is not None else None
    buttons = [step.render(v) for v in use.buttons]
    message: TemplateMessage = use.template.fill(values, header, buttons)
    return message


def _free_form(say: Say, step: Step) -> FreeForm:
    if say.kind == "media" and say.media is not None:
        return _media(say, step)
    if say.kind == "location" and say.location is not None:
        lat, lon, name, address = say.location
        return LocationMessage(
            step.render(lat).strip(),
            step.render(lon).strip(),
            step.render(name) if name else None,
            step.render(address) if address else None,
        )
    if say.kind == "reaction":
        message = step.message
        return ReactionMessage(message.id if message is not None else "", step.render(say.body))
    body = step.render(say.body)
    if say.kind == "text":
        return TextMessage(body)
    header = step.render(say.header) if say.header else None
    footer = step.render(say.footer) if say.footer else None
    if say.kind == "buttons":
        buttons = tuple(Button(i, step.render(t)) for i, t in say.buttons)
        return ButtonsMessage(body, buttons, header, footer)
    if say.rows is not None:
        sections = _built_sections(say.rows, step)
        if not sections:  # nothing to choose from: WhatsApp refuses an empty list
            return TextMessage(body)
    else:
        sections = tuple(
            Section(
                step.render(title) if title else None,
                tuple(Row(i, step.render(t), step.render(d) if d else None) for i, t, d in rows),
            )
            for title, rows in say.sections
        )
    return ListMessage(body, step.render(say.list_button or "Options"), sections, header, footer)


def _media(say: Say, step: Step) -> MediaMessage:
    """A link (http or https), a media id (digits) or the name of a file in MEDIA_DIR."""
    assert say.media is not None
    kind, source, filename = say.media
    value = step.render(source).strip()
    caption = step.render(say.body) if say.body else None
    name = step.render(filename) if filename else None
    if value.startswith(("https://", "http://")):
        return MediaMessage(kind, link=value, caption=caption, filename=name)
    if value.isdigit():
        return MediaMessage(kind, media_id=value, caption=caption, filename=name)
    return MediaMessage(kind, file=value, caption=caption, filename=name)


MORE = "_more"  # the id of the row that shows page N of built rows is "_more<N>" (from 0)
PAGE = "_page"  # the slot that holds which page of built rows the customer is looking at
PAGE_ROWS = LIMITS["list_rows"] - 1  # a page's rows, when another page follows


Built = tuple[Value, str, str, str | None, str | None]  # item, id, title, description, section


class BuiltRows:
    """The rows built from a list, with lookups by id and by typed title."""

    __slots__ = ("by_id", "by_title", "rows")

    def __init__(self, rows: list[Built]) -> None:
        self.rows = rows
        self.by_id = {r[1]: r for r in rows}
        self.by_title: dict[str, Built] = {}
        for r in rows:
            self.by_title.setdefault(normalize(r[2]), r)


# Rows built from a data table with templates over its fields only are the same for every
# conversation: built once (a 10,000-row catalogue takes ~130 ms), kept while the flow lives.
_STATIC: dict[int, tuple[Rows, Any, BuiltRows]] = {}
_STATIC_MAX = 256


def built_rows(rows: Rows, step: Step) -> BuiltRows:
    """A row for each item of the rows' list; items whose id is empty or repeats an earlier
    one are left out (WhatsApp refuses them), and logged once per list."""
    if rows.source in step.data:  # a table, as it is (the sandbox would walk all of it)
        items = step.data[rows.source]
    else:
        try:
            items = step.compute(rows.items)
        except ExprError as e:
            step._expression_failed(rows.items.source, e)
            return BuiltRows([])
    if rows.static:
        cached = _STATIC.get(id(rows))
        if cached is not None and cached[1] is items:
            return cached[2]
    built = BuiltRows(_build(rows, step, items))
    if rows.static:
        if len(_STATIC) >= _STATIC_MAX:
            _STATIC.clear()
        _STATIC[id(rows)] = (rows, items, built)
    return built


def _build(rows: Rows, step: Step, items: Value) -> list[Built]:
    if not isinstance(items, list):
        items = [] if items is None else [items]
    out = []
    seen: set[str] = set()
    left_out = 0
    base = step.values()
    for index, item in enumerate(items, start=1):
        fields = item if isinstance(item, dict) else {}
        names = {**base, **fields, "item": item, "index": index}

        def fill(template: str | None, names: dict[str, Value] = names) -> str | None:
            if template is None:
                return None
            return render(template, names, lambda src: _computed(step, src, names))

        ident = (fill(rows.id) or "").strip()[: LIMITS["row_id"]]
        if not ident or ident in seen or ident.startswith(MORE):
            left_out += 1
            continue
        seen.add(ident)
        out.append(
            (item, ident, fill(rows.title) or ident, fill(rows.description), fill(rows.section))
        )
    if left_out:
        log.warning(
            "rows from %s: %d item(s) with an empty or repeated id left out", rows.source, left_out
        )
    return out


def _computed(step: Step, source: str, names: dict[str, Value]) -> Value:
    assert step.evaluate is not None
    try:
        return step.evaluate(parse_cached(source), names)
    except ExprError as e:
        step._expression_failed(source, e)
        return ""


def _built_sections(rows: Rows, step: Step) -> tuple[Section, ...]:
    """The page the customer is on: all rows when they fit in one list; otherwise 9 and a
    row for the next page (the last page shows up to 10)."""
    found = built_rows(rows, step).rows
    page = step.convo.slots.get(PAGE) or 0
    start = int(page) * PAGE_ROWS if isinstance(page, int | Decimal) else 0
    if start >= len(found):
        start = 0
    shown = found[start:]
    more = None
    if len(shown) > LIMITS["list_rows"]:
        left = len(shown) - PAGE_ROWS
        shown = shown[:PAGE_ROWS]
        more = Row(f"{MORE}{start // PAGE_ROWS + 1}", step.render(rows.more), f"{left} more")
    groups: dict[str | None, list[Row]] = {}
    for _item, ident, title, desc, section in shown:
        groups.setdefault(section if rows.section is not None else None, []).append(
            Row(ident, title, desc)
        )
    sections = [
        Section(title or ("Options" if rows.section else None), tuple(r))
        for title, r in groups.items()
    ]
    if more is not None:
        if rows.section is not None:
            sections.append(Section(step.render(rows.more), (more,)))
        else:
            sections[-1] = Section(None, (*sections[-1].rows, more))
    return tuple(sections)


_NO_STEP = Step(None, None, None)


class Cursor:
    """The shared machine's model: the state and step of whichever conversation is stepping.

    Callbacks read the step from here rather than from `send()` arguments, because eventless
    transitions (`then:`) run without the event's arguments.
    """

    __slots__ = ("state", "step")

    def __init__(self) -> None:
        self.state: str | None = IDLE
        self.step: Step = _NO_STEP


class Flow:
    """A compiled flow: its spec, its machine class and the one instance every contact shares."""

    def __init__(self, spec: FlowSpec, zone: ZoneInfo = UTC) -> None:
        self.spec = spec
        self.name = spec.name
        self.version = spec.version
        self._evaluate = Evaluator()
        self._cursor = Cursor()
        self.machine_class = compile_flow(spec, self._cursor, zone)
        refuse_async(self.machine_class)
        self._instance: Any = None
        self._tracer: Tracer | None = None

    def trace(self, sink: Callable[[str], None] | None) -> None:
        """Report every transition to `sink` (chat's /trace), or stop (None)."""
        self._tracer = Tracer(self.name, sink) if sink is not None else None
        self._instance = None

    @property
    def live_instances(self) -> int:
        return 0 if self._instance is None else 1

    def has_state(self, state: str | None) -> bool:
        return state is not None and state in self.spec.states

    def ends(self, state: str | None) -> bool:
        """True when the conversation is finished and the next message starts the flow again."""
        return state is None or state not in self.spec.states or self.spec.states[state].end

    def start(self, convo: ConversationView, inputs: dict[str, Value] | None = None) -> Effects:
        """Start (or restart) the flow: slots to their starting values, then the inputs a
        caller gave (inputs it did not give to their defaults), then enter the start state."""
        convo.misses = 0
        convo.slots = {}
        step = Step(convo, None, self._evaluate, self.spec.data)
        for slot, value in self.spec.slots.items():
            step.assign(slot, value)
        given = inputs or {}
        for slot, default in self.spec.inputs.items():
            if slot in given:
                convo.slots[slot] = given[slot]
            elif default is not None:
                step.assign(slot, default)
        return self._send("start", convo, None, IDLE)

    def returned(
        self,
        convo: ConversationView,
        outputs: dict[str, Value],
        save: tuple[tuple[str, str], ...] | None,
        resume: bool,
    ) -> Effects:
        """A flow this one called has ended with `outputs`: they go into slots (by `save`, or
        by name), then the call step's then:, or (`resume`, a branch's call) the step the
        customer was at asks its question again. A step that no longer calls (the flow changed
        meanwhile) starts the flow again."""
        got = {slot: outputs.get(output) for slot, output in save} if save else dict(outputs)
        state = self.spec.states.get(convo.state) if convo.state is not None else None
        if state is None:
            return self.start(convo)
        if not resume:
            if state.call is None or state.call.jump:
                return self.start(convo)
            return self._send("returned", convo, None, convo.state, result=got)
        convo.slots.update(got)
        step = Step(convo, None, self._evaluate, self.spec.data)
        for say in prompt_of(self.spec, state):
            step.say(say)
        step.entered = True
        step.effects.timer = self._timer("returned", step, convo.state)
        return step.effects

    def handle(self, convo: ConversationView, message: Message) -> Effects:
        """Feed one customer message to the state the conversation is in."""
        return self._send("message", convo, message, convo.state)

    def timeout(self, convo: ConversationView, rung: int) -> Effects:
        """The step's timer ran out: its timeout rung `rung`, or the end of its after: delay."""
        return self._send("timeout", convo, None, convo.state, rung=rung)

    def times_out(self, state: str | None, rung: int) -> bool:
        """True when `state` has a timer rung `rung` (a timer set by an older version of the flow
        may point at a step that no longer waits)."""
        spec = self.spec.states.get(state) if state is not None else None
        if spec is None:
            return False
        return rung < len(spec.timeout) or (rung == 0 and spec.after is not None)

    def awaits(self, state: str | None, name: str) -> bool:
        """True when step `state` waits for the end of a call of `name` (a flow changed since
        the call was made may no longer)."""
        spec = self.spec.states.get(state) if state is not None else None
        if spec is None:
            return False
        if spec.understand is not None and spec.action is None:
            return name == "llm.classify"
        return spec.action is not None and spec.action.name == name

    def done(
        self, convo: ConversationView, result: Value, args: dict[str, Value] | None = None
    ) -> Effects:
        """The step's action returned `result`: save it as the step says, then on_done:.
        A result without a field that save: names takes on_error: (kind "result"). A model's
        steps: an answer is said and on_done: taken (on_unknown: when the documents do not
        hold it); extracted fields are saved; a choice understood is taken by the branches."""
        state = self.spec.states.get(convo.state) if convo.state is not None else None
        assert state is not None
        if state.understand is not None and state.action is None:
            return self._understood(convo, args or {}, result)
        call = state.action
        assert call is not None
        if call.llm is not None:
            return self._model_done(convo, call, result)
        slots: dict[str, Value] = {}
        if isinstance(call.save, str):
            slots[call.save] = result
        elif call.save:
            for slot, path in call.save:
                found, value = _field(result, path)
                if not found:
                    return self.failed(convo, "result", f"the result has no field {path!r}")
                slots[slot] = value
        return self._send("done", convo, None, convo.state, result=slots)

    def failed(
        self,
        convo: ConversationView,
        kind: str,
        message: str,
        args: dict[str, Value] | None = None,
    ) -> Effects:
        """The step's action failed: the slot `error` gets {kind, message}, then on_error:.
        A step that asked a model to understand a message: the message is a no-match (the
        re-prompt ladder)."""
        state = self.spec.states.get(convo.state) if convo.state is not None else None
        if state is not None and state.understand is not None and state.action is None:
            return self._understood(convo, args or {}, None)
        call = state.action if state is not None else None
        if call is not None and call.faq and self.spec.faq is not None:  # no model answered
            step = Step(convo, None, self._evaluate, self.spec.data)
            _faq_answer(step, call, self.spec.faq, (args or {}).get("question"))
            if step.found:
                return self._send("done", convo, None, convo.state, result=step.result, step=step)
        error: Value = {"kind": kind, "message": message}
        return self._send("error", convo, None, convo.state, result={"error": error})

    def _model_done(self, convo: ConversationView, call: ActionCall, result: Value) -> Effects:
        got = result if isinstance(result, dict) else {}
        model = got.get("model") if isinstance(got.get("model"), str) else None
        slots: dict[str, Value] = {}
        if call.llm == "extract":
            value = got.get("value")
            if isinstance(call.save, str):
                slots[call.save] = value
            else:
                record = value if isinstance(value, dict) else {}
                slots.update({name: record.get(name) for name, _kind in call.fields})
            return self._send("done", convo, None, convo.state, result=slots)
        answer = got.get("answer") if isinstance(got.get("answer"), str) else ""
        assert isinstance(answer, str)
        found = bool(got.get("found")) and bool(answer.strip())
        if isinstance(call.save, str):
            slots[call.save] = answer if found else None
        if not found and not call.unknown:
            slots["error"] = {"kind": "unknown", "message": "the documents do not hold it"}
        step = Step(convo, None, self._evaluate, self.spec.data)
        step.found, step.reply, step.model = found, answer.strip(), model
        return self._send("done", convo, None, convo.state, result=slots, step=step)

    def _understood(
        self, convo: ConversationView, args: dict[str, Value], result: Value
    ) -> Effects:
        """The message a model was asked about, again: with the choice it picked (the branch of
        that choice takes it), or none (the re-prompt ladder)."""
        text = args.get("text") if isinstance(args.get("text"), str) else ""
        assert isinstance(text, str)
        got = result if isinstance(result, dict) else {}
        choice = got.get("choice") if isinstance(got.get("choice"), str) else None
        step = Step(convo, None, self._evaluate, self.spec.data)
        step.raw, step.norm, step.padded = text, normalize(text), words(text) if text else " "
        step.choice = choice if isinstance(choice, str) else None
        step.kind = "text"
        step.understood = True
        return self._send("message", convo, None, convo.state, step=step)

    def handback(self, convo: ConversationView) -> Effects:
        """What the bot says when a person's HANDOFF_TTL runs out and it takes over again."""
        step = Step(convo, None, self._evaluate, self.spec.data)
        for say in self.spec.handback:
            step.say(say)
        return step.effects

    def _send(
        self,
        event: str,
        convo: ConversationView,
        message: Message | None,
        state: str | None,
        *,
        rung: int = 0,
        result: dict[str, Value] | None = None,
        step: Step | None = None,
    ) -> Effects:
        step = step or Step(convo, message, self._evaluate, self.spec.data)
        step.rung = rung
        step.result = result or {}
        if self._instance is None:
            listeners = [self._tracer] if self._tracer is not None else []
            self._instance = self.machine_class(model=self._cursor, listeners=listeners)
        self._cursor.state = state
        self._cursor.step = step
        try:
            self._instance.send(event)
        except BaseException:
            self._instance = None  # never reuse an instance left mid-step
            raise
        finally:
            self._cursor.step = _NO_STEP
        convo.state = self._cursor.state
        step.effects.timer = self._timer(event, step, convo.state)
        return step.effects

    def _timer(self, event: str, step: Step, state: str | None) -> TimerPlan | None:
        """The flow timer once the step is over. Silence counts from when a step began waiting
        or from the customer's last message; a delay (after:) counts from entering its step."""
        spec = self.spec.states.get(state) if state is not None else None
        if spec is None or not spec.waits:
            return None
        if not step.entered:
            if event == "timeout":
                nxt = step.stayed_rung + 1 if step.stayed_rung is not None else len(spec.timeout)
                if nxt < len(spec.timeout):
                    return TimerPlan(nxt, spec.timeout[nxt].after - spec.timeout[nxt - 1].after)
                return None
            if spec.after is not None:
                return KEEP
        if spec.timeout:
            return TimerPlan(0, spec.timeout[0].after)
        if spec.after is not None:
            return TimerPlan(0, spec.after)
        return None


TRACED = {"message": "message", "timeout": "timer", "done": "action done", "error": "action error"}


class Tracer:
    """A listener of the shared machine that says each transition in words; the hidden states
    that conditional routes go through are left out."""

    def __init__(self, flow: str, sink: Callable[[str], None]) -> None:
        self._flow = flow
        self._sink = sink
        self._via: str | None = None
        self._why: str | None = None

    def after_transition(self, event: str | None, source: Any, target: Any) -> None:
        src = self._via or str(source.value)
        what = self._why or TRACED.get(event or "", event or "then")
        if target is None or target is source:
            self._sink(f"{self._flow}: {src} stays ({what})")
            return
        if str(target.value).startswith("_route"):  # a route by condition: report the event
            self._via, self._why = src, what
            return
        self._via = self._why = None
        shown = "(start)" if src == IDLE else src
        self._sink(f"{self._flow}: {shown} -> {target.value} ({what})")


# --- compiling -------------------------------------------------------------------------------

StepFn = Callable[[Step], Any]


def compile_flow(spec: FlowSpec, cursor: Cursor, zone: ZoneInfo = UTC) -> Any:
    """Build the machine class. Its callbacks are pure functions of the step found on `cursor`.

    Routes with conditions (go: or then: with when:) become eventless transitions out of the
    step (then:) or out of a hidden routing state the branch goes to (go:), so a route's
    condition sees what the branch's own set: has just computed."""

    def bind(fn: StepFn) -> Callable[[], Any]:
        return lambda: fn(cursor.step)

    ids = {name: f"s{i}" for i, name in enumerate(spec.states)}
    states: dict[str, Any] = {
        "s_idle": {"initial": True, "value": IDLE, "on": {"start": [{"target": ids[spec.start]}]}}
    }

    def routed(routes: tuple[Route, ...]) -> list[dict[str, Any]]:
        return [
            {"target": ids[r.to], "cond": [bind(_guard(r.guard))]}
            if r.guard is not None
            else {"target": ids[r.to]}
            for r in routes
        ]

    def target(routes: tuple[Route, ...]) -> str | None:
        if not routes:
            return None
        if len(routes) == 1 and routes[0].guard is None:
            return ids[routes[0].to]
        router = f"r{sum(1 for k in states if k.startswith('r'))}"
        states[router] = {"value": f"_route{router[1:]}", "transitions": routed(routes)}
        return router

    for name, state in spec.states.items():
        entered = _enter(state, spec.faq)
        definition: dict[str, Any] = {"value": name, "name": name, "enter": [bind(entered)]}
        on: dict[str, list[dict[str, Any]]] = {}
        moves = bool(state.then) and state.after is None and state.call is None
        definition["transitions"] = routed(state.then) if moves else _skipped(state, target, bind)
        if state.then and not moves:  # delayed (after:), or once the called flow has returned
            event = "timeout" if state.call is None else "returned"
            on[event] = [{"target": target(state.then), "on": [bind(_save_result)]}]
        if state.timeout:
            on["timeout"] = [
                {
                    "target": target(rung.routes),
                    "cond": [bind(_rung_is(i))],
                    "on": [bind(_timed_out(i, rung))],
                }
                for i, rung in enumerate(state.timeout)
            ]
        if state.answers:
            on["message"] = _transitions(spec, state, target, bind, zone)
        on.update(_action_events(state.action, ids[name], target, bind))
        if on:
            definition["on"] = on
        states[ids[name]] = definition
    return create_machine_class_from_definition(
        _class_name(spec.name),
        states=states,
        catch_errors_as_events=False,  # our callbacks' exceptions reach the engine, which recovers
        validate_trap_states=False,  # end and handoff states wait for the engine to restart them
    )


def refuse_async(machine_class: Any) -> None:
    """One async callback switches python-statemachine to its async engine: `send()` would
    return a coroutine that nobody awaits, and the shared machine would silently stall. Every
    callback a flow compiles to is plain; this keeps it so."""
    probe = machine_class(model=Cursor())
    if isinstance(probe._engine, AsyncEngine):
        raise TypeError(
            "the machine would run on python-statemachine's async engine (an async callback);"
            " flows must compile to plain callbacks"
        )


def _action_events(
    call: ActionCall | None, me: str, target: Callable[[tuple[Route, ...]], str | None], bind: Any
) -> dict[str, list[dict[str, Any]]]:
    if call is None:
        return {}
    save = bind(_save_result)
    if call.llm == "answer":
        done = [
            {
                "target": target(call.done),
                "cond": [bind(lambda step: step.found)],
                "on": [bind(_said_answer)],
            },
            {"target": target(call.unknown or call.error), "on": [save]},
        ]
    else:
        done = [{"target": target(call.done), "on": [save]}]
    return {
        "done": done,
        "error": [{"target": target(call.error), "on": [save]}],
        # A message meets this step only when no call is outstanding (the flow changed under
        # the conversation): the step is entered again, which makes the call.
        "message": [{"target": me}],
    }


def _skipped(
    state: StateSpec, target: Callable[[tuple[Route, ...]], str | None], bind: Any
) -> list[dict[str, Any]]:
    """A model's step entered when no model may be asked (none configured, or the day's
    budget spent): on_error: at once."""
    call = state.action
    if call is None or call.llm is None:
        return []
    faq = []
    if call.faq:
        faq.append(
            {
                "target": target(call.done),
                "cond": [bind(lambda step: step.skipped and step.found)],
                "on": [bind(_said_answer)],
            }
        )
    return [
        *faq,
        {
            "target": target(call.error),
            "cond": [bind(lambda step: step.skipped)],
            "on": [bind(_save_result)],
        },
    ]


def _faq_answer(step: Step, call: ActionCall, faq: Faq, question: Value) -> None:
    """The FAQ's answer to `question`, if an entry's keywords hit it: said, then on_done:."""
    hit = faq.answer(question) if isinstance(question, str) and question.strip() else None
    if hit is None:
        return
    step.found, step.reply, step.model = True, hit.answer, None
    step.result = {call.save: hit.answer} if isinstance(call.save, str) else {}


def _save_result(step: Step) -> None:
    step.convo.slots.update(step.result)


def _said_answer(step: Step) -> None:
    step.convo.slots.update(step.result)
    step.say_model(step.reply, step.model)


def _field(value: Value, path: str) -> tuple[bool, Value]:
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _guard(expr: Expr) -> StepFn:
    return lambda step: step.test(expr)


def _rung_is(i: int) -> StepFn:
    return lambda step: step.rung == i


def _timed_out(i: int, rung: Timeout) -> StepFn:
    sets, says, stays = rung.sets, rung.says, not rung.routes

    def act(step: Step) -> None:
        for slot, value in sets:
            step.assign(slot, value)
        for say in says:
            step.say(say)
        if stays:
            step.stayed_rung = i

    return act


def _class_name(flow: str) -> str:
    return "Flow_" + "".join(c if c.isalnum() else "_" for c in flow)


def _enter(state: StateSpec, faq: Faq | None = None) -> StepFn:
    says, sets, handoff, call = state.says, state.sets, state.handoff, state.action
    subflow = state.call
    fallback = faq if call is not None and call.faq else None

    def enter(step: Step) -> None:
        step.entered = True
        step.convo.misses = 0
        step.convo.slots.pop(PAGE, None)
        for slot, value in sets:
            step.assign(slot, value)
        for say in says:
            step.say(say)
        if handoff:
            step.effects.handoff = True
        if call is not None and call.llm is not None and step.llm_block is not None:
            step.skipped = True  # its eventless transition takes on_error:
            step.effects.llm_skipped = step.llm_block
            why = {
                "unavailable": "no model is configured",
                "budget": "no calls left today",
                "timeout": "no time left in this turn",
            }.get(step.llm_block, step.llm_block)
            step.result = {"error": {"kind": step.llm_block, "message": why}}
            if fallback is not None:  # the FAQ answers instead, by keywords
                question = step.argument(dict(call.args)["question"])
                _faq_answer(step, call, fallback, question)
        elif call is not None:
            args = {k: step.argument(v) for k, v in call.args}
            step.effects.action = ActionRequest(call.name, args, call.within)
        if subflow is not None:
            step.effects.call = _request(step, subflow, resume=False)

    return enter


def _request(step: Step, call: SubflowCall, *, resume: bool) -> SubflowRequest:
    args = {k: step.argument(v) for k, v in call.args}
    return SubflowRequest(call.flow, args, call.save, resume, call.jump)


def _transitions(
    spec: FlowSpec,
    state: StateSpec,
    target: Callable[[tuple[Route, ...]], str | None],
    bind: Callable[[StepFn], Any],
    zone: ZoneInfo,
) -> list[dict[str, Any]]:
    """The state's branches, then the flow's anywhere: branches, then its re-prompt ladder."""
    titles = {i: normalize(t) for say in offered_says(spec, state) for i, t in say.choices()}
    built = {say.rows.source: say.rows for say in offered_says(spec, state) if say.rows}
    ids = {name: f"s{i}" for i, name in enumerate(spec.states)}  # the re-prompt ladder's go:
    out: list[dict[str, Any]] = []
    if built:  # the row that shows the next page of built rows: the step's question again
        prompt = prompt_of(spec, state)
        out.append(
            {
                "target": None,
                "cond": [bind(lambda step: (step.choice or "").startswith(MORE))],
                "on": [bind(lambda step: _next_page(step, prompt))],
            }
        )
    for branch in (*state.on, *spec.anywhere):
        out.append(
            {
                "target": target(branch.routes),
                "cond": [bind(_condition(branch, titles, spec.faq, zone, built))],
                "on": [bind(_action(branch))],
            }
        )
    if state.understand is not None:
        meanings = _meanings(state, titles)
        out.append(
            {
                "target": None,
                "cond": [bind(_may_understand)],
                "on": [bind(lambda step: _ask_to_understand(step, meanings))],
            }
        )
    ladder = state.otherwise or _typed_ladder(state, spec.otherwise)
    reprompt = bind(_reprompt(ladder, prompt_of(spec, state)))
    if ladder[-1].go is not None:
        last = len(ladder) - 1
        exhausted = bind(lambda step: step.convo.misses >= last)
        out.append({"target": ids[ladder[-1].go], "cond": [exhausted], "on": [reprompt]})
    out.append({"target": None, "on": [reprompt]})
    return out


MAX_UNDERSTOOD = 2000  # characters of a message a model is asked to understand


def _meanings(state: StateSpec, titles: dict[str, str]) -> dict[str, str]:
    """What each choice the step's branches take means: an intent's words, or the title of
    the button or row that offers it."""
    declared = dict(state.understand or ())
    out: dict[str, str] = {}
    for b in state.on:
        if b.when == "choice":
            for ident in b.values:
                out[ident] = declared.get(ident) or titles.get(ident) or ident
    return out


def _may_understand(step: Step) -> bool:
    """Free text that no branch took, not already understood, and a model may be asked."""
    if step.understood or step.message is None or step.kind != "text" or not step.raw:
        return False
    if step.llm_block is not None:
        step.effects.llm_skipped = step.llm_block
        return False
    return True


def _ask_to_understand(step: Step, meanings: dict[str, str]) -> None:
    args: dict[str, Value] = {"text": step.raw[:MAX_UNDERSTOOD], "choices": dict(meanings)}
    step.effects.action = ActionRequest("llm.classify", args, 10.0)


def _next_page(step: Step, prompt: tuple[Say, ...]) -> None:
    """The page a More row names (so tapping an old More row again shows the same page)."""
    wanted = (step.choice or "")[len(MORE) :]
    step.convo.slots[PAGE] = int(wanted) if wanted.isdigit() and len(wanted) < 6 else 0
    for say in prompt:
        step.say(say)


def _typed_ladder(state: StateSpec, flow: tuple[Reprompt, ...]) -> tuple[Reprompt, ...]:
    """A step that asks for a type and has no otherwise: of its own first says what it asks
    for ("Please send a whole number from 1 to 20."), then follows the flow's ladder."""
    typed = [b for b in state.on if b.when == "type"]
    if not typed:
        return flow
    wanted = " or ".join(describe(b.values[0], b.bounds or Bounds()) for b in typed)
    hint = Say(
        typed[0].line, "text", f"Please send {wanted}.".replace("{", "{{").replace("}", "}}")
    )
    return (Reprompt(typed[0].line, (hint,)), *flow[1:])


def _condition(
    branch: Branch,
    titles: dict[str, str],
    faq: Faq | None,
    zone: ZoneInfo = UTC,
    built: dict[str, Rows] | None = None,
) -> StepFn:
    """The branch's test of the message, and then its when: guard."""
    test = _message_test(branch, titles, faq, zone, built or {})
    guard = branch.guard
    if guard is None:
        assert test is not None
        return test
    if test is None:
        return lambda step: step.test(guard)
    return lambda step: test(step) and step.test(guard)


def _message_test(
    branch: Branch, titles: dict[str, str], faq: Faq | None, zone: ZoneInfo, built: dict[str, Rows]
) -> StepFn | None:
    when = branch.when
    if when == "when":
        return None
    if when == "type" and branch.values[0] == "choice":
        return _picked(built.get(branch.values[1]))
    if when == "type":
        return _type_test(branch.values[0], branch.bounds or Bounds(), zone)
    if when == "choice":
        chosen = frozenset(branch.values)
        typed = frozenset(titles[i] for i in branch.values if i in titles)

        def choice(step: Step) -> bool:
            if step.choice is not None:
                return step.choice in chosen
            return step.norm in typed  # the customer typed the button's title

        return choice
    if when == "text":
        exact = frozenset(normalize(v) for v in branch.values)
        return lambda step: step.norm in exact
    if when == "keywords":
        keywords = Keywords.of(branch.values)
        return lambda step: keywords.count(step.padded) > 0
    if when == "regex":
        assert branch.pattern is not None
        return _regex_test(branch.pattern, branch.line)
    if when == "kind":
        return _kind_test(frozenset(branch.values))
    assert when == "faq" and faq is not None

    def faq_hit(step: Step) -> bool:
        step.faq_hit = faq.answer(step.raw) if step.raw else None
        return step.faq_hit is not None

    return faq_hit


def _picked(rows: Rows | None) -> StepFn:
    """type: choice from a list: a row tapped (by id) or its title typed; the item is kept."""

    def picked(step: Step) -> bool:
        if rows is None:  # the step shows no rows from that list (the validator says so)
            return False
        built = built_rows(rows, step)
        found = built.by_id.get(step.choice) if step.choice is not None else None
        if found is None and step.choice is None and step.norm:
            found = built.by_title.get(step.norm)
        if found is None:
            return False
        step.typed = found[0]
        return True

    return picked


def _type_test(kind: str, bounds: Bounds, zone: ZoneInfo) -> StepFn:
    def typed(step: Step) -> bool:
        if step.message is None or not (step.raw or step.choice):
            return False
        at = float(step.message.timestamp)
        step.typed, ok = read(kind, step.raw, bounds, choice=step.choice, at=at, zone=zone)
        return ok

    return typed


def _regex_test(pattern: regex.Pattern[str], line: int) -> StepFn:
    def search(step: Step) -> bool:
        # A designer's pattern like "([0-9]+) people" backtracks in time quadratic in a
        # customer's 60,000 digits: patterns see the first REGEX_WINDOW characters only;
        # one like "(a+)+$" backtracks exponentially even there: the search is cut short.
        try:
            step.match = pattern.search(step.raw[:REGEX_WINDOW], timeout=REGEX_TIMEOUT)
        except TimeoutError:
            log.warning(
                "regex %.80r at line %d gave up after %.0f ms on a message; no match",
                pattern.pattern,
                line,
                REGEX_TIMEOUT * 1000,
            )
            step.match = None
        return step.match is not None

    return search


def _kind_test(kinds: frozenset[str]) -> StepFn:
    def kind(step: Step) -> bool:
        k = step.kind
        return (
            "any" in kinds
            or k in kinds
            or ("media" in kinds and k in MEDIA)
            or ("reply" in kinds and k in REPLIES)
        )

    return kind


def _action(branch: Branch) -> StepFn:
    save, sets, says, when = branch.save, branch.sets, branch.says, branch.when
    subflow = branch.call

    def act(step: Step) -> None:
        step.convo.misses = 0  # understood: the re-prompt ladder starts over
        slots = step.convo.slots
        if save:
            slots[save] = step.typed if when == "type" else step.saved()
        if when == "regex" and step.match is not None:
            slots.update({k: v for k, v in step.match.groupdict().items() if v is not None})
        for slot, value in sets:
            step.assign(slot, value)
        if when == "faq" and step.faq_hit is not None:
            step.say(Say(branch.line, "text", step.faq_hit.answer))
        for say in says:
            step.say(say)
        if subflow is not None:
            step.effects.call = _request(step, subflow, resume=True)

    return act


def _reprompt(ladder: tuple[Reprompt, ...], prompt: tuple[Say, ...]) -> StepFn:
    def reprompt(step: Step) -> None:
        item = ladder[min(step.convo.misses, len(ladder) - 1)]
        step.convo.misses += 1
        step.effects.reprompts += 1
        for say in item.says:
            step.say(say)
        if item.repeat and item.go is None:
            for say in prompt:
                step.say(say)

    return reprompt
