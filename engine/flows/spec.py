"""The flow language's parts, as the reader produces them: a `FlowSpec` of `StateSpec`s, their
branches, re-prompts and messages.

A flow is a set of named steps (states). A step says something when the conversation enters it,
then either waits for the customer (`on:` branches, tried in order, then `otherwise:` re-prompts),
moves on by itself (`then:`), hands the conversation to a person (`handoff: true`) or ends it
(`end: true`; the next message starts the flow again). `reader` turns a file into these,
`says` reads messages, `checks` checks a whole flow; docs/flows.md is the designer's reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import regex

from .expr import Expr
from .text import Faq, normalize
from .types import Bounds
from .values import Value

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SLOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONDITIONS = (
    "choice",
    "text",
    "keywords",
    "regex",
    "kind",
    "faq",
    "type",
)  # what the message holds
MESSAGE_KINDS = frozenset(
    {
        "any",
        "text",
        "media",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "order",
        "reply",
        "flow_reply",
        "unsupported",
        "unknown",
    }
)
FLOW_KEYS = (
    "description",
    "start",
    "faq",
    "slots",
    "anywhere",
    "otherwise",
    "handback",
    "inputs",
    "outputs",
    "data",
    "read",
    "states",
)
STATE_KEYS = (
    "description",
    "say",
    "set",
    "on",
    "then",
    "after",
    "timeout",
    "otherwise",
    "handoff",
    "end",
    "action",
    "with",
    "save",
    "within",
    "on_done",
    "on_error",
    "call",
    "flow",
    "answer",
    "extract",
    "understand",
    "on_unknown",
)
ACTION_KEYS = ("action", "with", "save", "within", "on_done", "on_error")
BRANCH_KEYS = (
    *CONDITIONS,
    "min",
    "max",
    "from",
    "when",
    "say",
    "set",
    "save",
    "go",
    "call",
    "with",
)
REPROMPT_KEYS = ("say", "repeat", "go")
TIMEOUT_KEYS = ("after", "say", "set", "go")
DEFAULT_REPROMPT = "Sorry, I didn't understand that."
DEFAULT_HANDBACK = (
    "Our team has handed this conversation back to the assistant. Send a message any time."
)


@dataclass(frozen=True, slots=True)
class Rows:
    """List rows built at run time, one per item of a list (a data table, or an expression):
    templates over the item's fields (and `item`, the item itself), grouped into sections by
    `section` when given. Past 10 rows they are shown in pages, with a row for the next."""

    line: int
    source: str  # as written: a data table's name, or "= expression"
    items: Expr  # what gives the list
    id: str
    title: str
    description: str | None = None
    section: str | None = None
    more: str = "More"  # the title of the row that shows the next page
    static: bool = False  # a data table's rows over its fields only: the same for everyone


@dataclass(frozen=True, slots=True)
class TemplateUse:
    """An approved template as a flow uses it: its values are flow texts filled at run time."""

    line: int
    template: Any  # engine.flows.templates.Template
    params: tuple[str, ...] = ()  # positional values
    named: tuple[tuple[str, str], ...] = ()  # or named ones
    header: str | None = None
    buttons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Say:
    """A message the flow sends; texts are templates filled at run time."""

    line: int
    kind: str  # text | buttons | list | template (an approved template, whatever the window)
    body: str
    buttons: tuple[tuple[str, str], ...] = ()  # (id, title)
    list_button: str | None = None
    sections: tuple[tuple[str | None, tuple[tuple[str, str, str | None], ...]], ...] = ()
    header: str | None = None
    footer: str | None = None
    rows: Rows | None = None  # rows built from a list at run time (sections stays empty)
    template: TemplateUse | None = None  # kind template: the message; else its fallback
    # kind media: (image | document | video | audio, source, filename); the body is the caption
    media: tuple[str, str, str | None] | None = None
    location: tuple[str, str, str | None, str | None] | None = None  # lat, lon, name, address
    quote: bool = False  # a contextual reply: it quotes the customer's message

    def choices(self) -> Iterable[tuple[str, str]]:
        yield from self.buttons
        for _title, rows in self.sections:
            for row_id, title, _desc in rows:
                yield row_id, title
        if self.template is not None:  # a template's quick replies come back as choices too
            for kind, text, _takes in self.template.template.buttons:
                if kind == "quick_reply":
                    yield slug(text), text


@dataclass(frozen=True, slots=True)
class Route:
    """Where a branch or a step goes: to `to`, if `guard` holds (None: always)."""

    line: int
    to: str
    guard: Expr | None = None


# A slot's new value: a template (text with {placeholders}) or an expression ("= ...").
SetValue = str | Expr


@dataclass(frozen=True, slots=True)
class SubflowCall:
    """Continue in another flow with `args` as its inputs. A call (`call:` on a step or a
    branch) comes back when that flow ends: its outputs go into slots (`save`: (slot, output)
    pairs; none: each output into the slot of its name), then the step's then: (a step's call)
    or the step the customer was at, asked again (a branch's call). A jump (`flow:`) does not
    come back."""

    line: int
    flow: str
    args: tuple[tuple[str, Arg], ...] = ()
    save: tuple[tuple[str, str], ...] | None = None
    jump: bool = False
    gives: frozenset[str] = frozenset()  # the caller's slots it fills, as far as the reader knew


@dataclass(frozen=True, slots=True)
class Branch:
    line: int
    when: str  # one of CONDITIONS, or "when" for a branch that only tests its guard
    values: tuple[str, ...] = ()
    pattern: regex.Pattern[str] | None = None  # the regex module's, searched with a timeout
    guard: Expr | None = None  # `when:`: an expression that must hold as well
    says: tuple[Say, ...] = ()
    sets: tuple[tuple[str, SetValue], ...] = ()
    save: str | None = None
    routes: tuple[Route, ...] = ()  # go:, in order; none: stay in the step
    bounds: Bounds | None = None  # type: with min:/max:
    call: SubflowCall | None = None  # a digression: another flow, then back to this step


@dataclass(frozen=True, slots=True)
class Reprompt:
    line: int
    says: tuple[Say, ...] = ()
    repeat: bool = False
    go: str | None = None
    go_line: int = 0


@dataclass(frozen=True, slots=True)
class Timeout:
    """One rung of a waiting step's silence ladder: `after` seconds of silence since the step
    began waiting, say and set, then go (or, with no go:, keep waiting for the next rung)."""

    line: int
    after: float
    says: tuple[Say, ...] = ()
    sets: tuple[tuple[str, SetValue], ...] = ()
    routes: tuple[Route, ...] = ()


# An action parameter: a slot value or a constant, or a mapping or list of them (an http body).
Arg = SetValue | Decimal | bool | None | dict[str, "Arg"] | list["Arg"]


@dataclass(frozen=True, slots=True)
class ActionCall:
    """A step that calls business code: `name` with `args`, its result saved into slots (the
    whole result in one slot, or fields into slots), then on_done: or on_error: routes."""

    line: int
    name: str
    args: tuple[tuple[str, Arg], ...] = ()
    save: str | tuple[tuple[str, str], ...] | None = None  # slot, or (slot, field path) pairs
    within: float = 10.0
    done: tuple[Route, ...] = ()
    error: tuple[Route, ...] = ()
    # A model's step (answer: or extract:, calling the built-in llm.answer or llm.extract):
    # skipped for on_error: (kind unavailable or budget) when no model may be asked.
    llm: str | None = None
    unknown: tuple[Route, ...] = ()  # answer: the documents do not hold it (default on_error:)
    fields: tuple[tuple[str, str], ...] = ()  # extract: the fields and their types
    many: bool = False  # extract: a list of records
    faq: bool = False  # answer: when no model answers, the flow's FAQ does, by keywords


@dataclass(frozen=True, slots=True)
class StateSpec:
    name: str
    line: int
    says: tuple[Say, ...] = ()
    sets: tuple[tuple[str, SetValue], ...] = ()
    on: tuple[Branch, ...] = ()
    then: tuple[Route, ...] = ()  # where the step moves on by itself, first route that holds
    after: float | None = None  # then: only after this many seconds (a delay: the step waits)
    timeout: tuple[Timeout, ...] = ()  # the silence ladder of a waiting step
    otherwise: tuple[Reprompt, ...] | None = None
    handoff: bool = False
    end: bool = False
    action: ActionCall | None = None
    call: SubflowCall | None = None  # call: (then: once it returns) or flow: (a jump)
    # understand: free text that no branch takes is given to a model, which picks one of the
    # step's choices (id, what it means) or none: then the step's branches take that choice.
    understand: tuple[tuple[str, str], ...] | None = None

    @property
    def waits(self) -> bool:
        """The step waits for the customer (or for time to pass) instead of moving on."""
        return bool(self.on) or self.after is not None

    @property
    def answers(self) -> bool:
        """Customer messages in this step meet branches and the re-prompt ladder."""
        return self.waits


@dataclass(frozen=True, slots=True)
class FlowSpec:
    name: str
    path: str
    version: str
    start: str
    states: dict[str, StateSpec]
    anywhere: tuple[Branch, ...] = ()
    otherwise: tuple[Reprompt, ...] = ()
    faq: Faq | None = None
    slots: dict[str, SetValue] = field(default_factory=dict)
    handback: tuple[Say, ...] = ()  # said when HANDOFF_TTL runs out and the bot takes over
    inputs: dict[str, SetValue | None] = field(default_factory=dict)  # None: the caller gives it
    outputs: tuple[str, ...] = ()  # the slots a caller gets back when this flow ends
    data: dict[str, Value] = field(default_factory=dict)  # tables from data files, by name
    read: str | None = None  # mark customers' messages read ("read"), and show typing ("typing")


def prompt_of(spec: FlowSpec, state: StateSpec) -> tuple[Say, ...]:
    """What a waiting state asked: its own messages, or those of the steps leading to it."""
    if state.says:
        return state.says
    return tuple(
        say
        for other in spec.states.values()
        if any(r.to == state.name for r in other.then)
        for say in other.says
    )


def offered_says(spec: FlowSpec, state: StateSpec) -> Iterable[Say]:
    """Every message a waiting state may show before the customer answers it."""
    yield from prompt_of(spec, state)
    for r in state.otherwise or spec.otherwise:
        yield from r.says


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", normalize(title)).strip("_")[:64]
