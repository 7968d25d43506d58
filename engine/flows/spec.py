"""The flow language: reading a flow file into a checked `FlowSpec`, every mistake at file:line.

A flow is a set of named steps (states). A step says something when the conversation enters it,
then either waits for the customer (`on:` branches, tried in order, then `otherwise:` re-prompts),
moves on by itself (`then:`), hands the conversation to a person (`handoff: true`) or ends it
(`end: true`; the next message starts the flow again). See the README for the full language.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problem
from ..outbound import LIMITS
from .source import SourceError, YList, YMap, load
from .text import (
    BUILTIN_VALUES,
    Faq,
    FaqEntry,
    Keywords,
    normalize,
    placeholders,
    static_length,
    stray_brace,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SLOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONDITIONS = ("choice", "text", "keywords", "regex", "kind", "faq")
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
FLOW_KEYS = ("description", "start", "faq", "slots", "anywhere", "otherwise", "states")
STATE_KEYS = ("description", "say", "set", "on", "then", "otherwise", "handoff", "end")
BRANCH_KEYS = (*CONDITIONS, "say", "set", "save", "go")
REPROMPT_KEYS = ("say", "repeat", "go")
DEFAULT_REPROMPT = "Sorry, I didn't understand that."


@dataclass(frozen=True, slots=True)
class Say:
    """A message the flow sends; texts are templates filled at run time."""

    line: int
    kind: str  # text | buttons | list
    body: str
    buttons: tuple[tuple[str, str], ...] = ()  # (id, title)
    list_button: str | None = None
    sections: tuple[tuple[str | None, tuple[tuple[str, str, str | None], ...]], ...] = ()
    header: str | None = None
    footer: str | None = None

    def choices(self) -> Iterable[tuple[str, str]]:
        yield from self.buttons
        for _title, rows in self.sections:
            for row_id, title, _desc in rows:
                yield row_id, title


@dataclass(frozen=True, slots=True)
class Branch:
    line: int
    when: str  # one of CONDITIONS
    values: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    says: tuple[Say, ...] = ()
    sets: tuple[tuple[str, str], ...] = ()
    save: str | None = None
    go: str | None = None
    go_line: int = 0


@dataclass(frozen=True, slots=True)
class Reprompt:
    line: int
    says: tuple[Say, ...] = ()
    repeat: bool = False
    go: str | None = None
    go_line: int = 0


@dataclass(frozen=True, slots=True)
class StateSpec:
    name: str
    line: int
    says: tuple[Say, ...] = ()
    sets: tuple[tuple[str, str], ...] = ()
    on: tuple[Branch, ...] = ()
    then: str | None = None
    then_line: int = 0
    otherwise: tuple[Reprompt, ...] | None = None
    handoff: bool = False
    end: bool = False

    @property
    def waits(self) -> bool:
        return bool(self.on)


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
    slots: dict[str, str] = field(default_factory=dict)


def read_flow(path: Path) -> tuple[FlowSpec | None, list[Problem]]:
    """Read and check one flow file: (spec, []) when valid, (None, problems) otherwise."""
    reader = _Reader(path)
    spec = reader.flow()
    if reader.problems:
        return None, sorted(reader.problems, key=lambda p: (p.file, p.line))
    return spec, []


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = str(path)
        self.problems: list[Problem] = []
        self.slots: set[str] = set()  # every slot the flow can set
        self.used: list[tuple[int, str, str]] = []  # (line, file, placeholder) to check at the end

    def err(self, line: int, message: str, file: str | None = None) -> None:
        self.problems.append(Problem(file or self.file, line, message))

    # --- document --------------------------------------------------------------------------

    def flow(self) -> FlowSpec | None:
        name = self.path.stem
        if not NAME.fullmatch(name):
            self.err(1, f"flow file name {name!r} must be letters, digits, '_', '-' or '.'")
        try:
            raw = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.err(1, f"cannot read flow: {e}")
            return None
        doc = self.yaml(raw, self.file)
        if doc is None:
            return None
        if not isinstance(doc, YMap):
            self.err(getattr(doc, "line", 1), "a flow must be a mapping with start: and states:")
            return None
        self.keys(doc, FLOW_KEYS, "flow")
        faq, faq_text = self.faq(doc)
        slots = self.slot_defaults(doc)
        anywhere = self.branches(doc, "anywhere", "anywhere") if "anywhere" in doc else ()
        otherwise = self.reprompts(doc, "otherwise") if "otherwise" in doc else None
        states = self.states(doc)
        start = self.scalar(doc, "start", required=True) or ""
        if faq is None and any(b.when == "faq" for b in self.all_branches(states, anywhere)):
            self.err(doc.line, "a branch uses faq: true but the flow names no faq: file")
        spec = FlowSpec(
            name=name,
            path=self.file,
            version=hashlib.sha256((raw + "\0" + faq_text).encode()).hexdigest()[:12],
            start=start,
            states=states,
            anywhere=anywhere,
            otherwise=otherwise
            or (Reprompt(doc.line, (Say(doc.line, "text", DEFAULT_REPROMPT),), repeat=True),),
            faq=faq,
            slots=slots,
        )
        if start and start not in states:
            self.err(
                doc.line_of("start"), f"start: unknown state {start!r}{self.hint(start, states)}"
            )
        self.targets(spec)
        if start in states:
            self.reachability(spec)
            self.then_cycles(spec)
        self.choices(spec)
        for line, file, name_ in self.used:
            if name_ not in BUILTIN_VALUES and name_ not in self.slots:
                self.err(
                    line, f"unknown placeholder {{{name_}}}: no step sets a slot by that name", file
                )
        return spec

    def yaml(self, text: str, file: str) -> Any:
        try:
            doc, problems = load(text)
        except SourceError as e:
            self.err(e.line, e.message, file)
            return None
        for p in problems:
            self.err(p.line, p.message, file)
        return doc

    def faq(self, doc: YMap) -> tuple[Faq | None, str]:
        ref = self.scalar(doc, "faq")
        if ref is None:
            return None, ""
        path = self.path.parent / ref
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.err(doc.line_of("faq"), f"faq: cannot read {ref!r}: {e.__class__.__name__}")
            return None, ""
        file = str(path)
        items = self.yaml(text, file)
        if not isinstance(items, YList) or not items:
            self.err(
                getattr(items, "line", 1),
                "an FAQ file is a list of {question, keywords, answer}",
                file,
            )
            return None, text
        entries = []
        for i, item in enumerate(items):
            line = items.line_of(i)
            if not isinstance(item, YMap):
                self.err(line, "an FAQ entry is a mapping with question, keywords and answer", file)
                continue
            self.keys(item, ("question", "keywords", "answer"), "FAQ entry", file)
            keywords = item.get("keywords")
            answer = item.get("answer")
            if (
                not isinstance(keywords, YList)
                or not keywords
                or not all(isinstance(k, str) for k in keywords)
            ):
                self.err(
                    item.line_of("keywords"), "keywords: a non-empty list of words or phrases", file
                )
                continue
            if not isinstance(answer, str) or not answer.strip():
                self.err(item.line_of("answer"), "answer: the text to send", file)
                continue
            self.template(answer, item.line_of("answer"), LIMITS["text"], "answer", file)
            entries.append(
                FaqEntry(str(item.get("question") or answer[:40]), Keywords.of(keywords), answer)
            )
        return Faq(tuple(entries)), text

    def slot_defaults(self, doc: YMap) -> dict[str, str]:
        raw = doc.get("slots")
        if raw is None:
            return {}
        if not isinstance(raw, YMap):
            self.err(doc.line_of("slots"), "slots: a mapping of slot names to starting values")
            return {}
        out = {}
        for key, value in raw.items():
            if self.slot_name(key, raw.line_of(key)) and isinstance(value, str | None):
                out[key] = value or ""
            elif not isinstance(value, str | None):
                self.err(raw.line_of(key), f"slots: {key} must be text")
        return out

    def states(self, doc: YMap) -> dict[str, StateSpec]:
        raw = doc.get("states")
        if not isinstance(raw, YMap) or not raw:
            self.err(doc.line_of("states"), "states: a mapping of step names to steps is required")
            return {}
        states = {}
        for name, body in raw.items():
            line = raw.line_of(name)
            if name.startswith("_") or not name.strip():
                self.err(line, f"state name {name!r}: names may not be empty or start with '_'")
            elif len(name) > 100:
                self.err(line, "state name longer than 100 characters")
            state = self.state(name, body, line)
            if state is not None:
                states[name] = state
        return states

    # --- steps -------------------------------------------------------------------------------

    def state(self, name: str, body: Any, line: int) -> StateSpec | None:
        if not isinstance(body, YMap):
            self.err(line, f"state {name!r} must be a mapping (say:, on:, then:, handoff: or end:)")
            return None
        self.keys(body, STATE_KEYS, f"state {name!r}")
        modes = [
            k
            for k in ("on", "then", "handoff", "end")
            if k in body and body[k] not in (None, False)
        ]
        if len(modes) != 1:
            what = "none" if not modes else " and ".join(modes)
            self.err(
                line,
                f"state {name!r} needs exactly one of on:, then:, handoff: true or end: true"
                f" (has {what})",
            )
        for flag in ("handoff", "end"):
            if flag in body and not isinstance(body[flag], bool):
                self.err(body.line_of(flag), f"{flag}: write true or false")
        then = self.scalar(body, "then")
        on = self.branches(body, "on", f"state {name!r}") if "on" in body else ()
        if "on" in body and not on and isinstance(body.get("on"), YList):
            self.err(body.line_of("on"), "on: needs at least one branch")
        otherwise = self.reprompts(body, "otherwise") if "otherwise" in body else None
        if otherwise is not None and "on" not in body:
            self.err(
                body.line_of("otherwise"), "otherwise: only applies to a state that waits (on:)"
            )
        return StateSpec(
            name=name,
            line=line,
            says=self.says(body, "say"),
            sets=self.sets(body),
            on=on,
            then=then,
            then_line=body.line_of("then"),
            otherwise=otherwise,
            handoff=body.get("handoff") is True,
            end=body.get("end") is True,
        )

    def branches(self, parent: YMap, key: str, where: str) -> tuple[Branch, ...]:
        raw = parent.get(key)
        if not isinstance(raw, YList):
            self.err(parent.line_of(key), f"{key}: a list of branches (- choice: ..., go: ...)")
            return ()
        out = []
        for i, item in enumerate(raw):
            line = raw.line_of(i)
            if not isinstance(item, YMap):
                self.err(line, f"{where}: a branch is a mapping like {{choice: yes, go: next}}")
                continue
            branch = self.branch(item, line)
            if branch is not None:
                out.append(branch)
        return tuple(out)

    def branch(self, item: YMap, line: int) -> Branch | None:
        self.keys(item, BRANCH_KEYS, "branch")
        conds = [c for c in CONDITIONS if c in item]
        if len(conds) != 1:
            self.err(
                line, f"a branch needs exactly one of {', '.join(CONDITIONS)} (has {len(conds)})"
            )
            return None
        when = conds[0]
        condition = self.condition(when, item[when], item.line_of(when))
        if condition is None:
            return None
        values, pattern = condition
        save = self.scalar(item, "save")
        if save is not None:
            self.slot_name(save, item.line_of("save"))
        return Branch(
            line=line,
            when=when,
            values=values,
            pattern=pattern,
            says=self.says(item, "say"),
            sets=self.sets(item),
            save=save,
            go=self.scalar(item, "go"),
            go_line=item.line_of("go"),
        )

    def condition(
        self, when: str, raw: Any, line: int
    ) -> tuple[tuple[str, ...], re.Pattern[str] | None] | None:
        """The values (or pattern) a branch condition tests; None when it cannot be read."""
        if when == "faq":
            if raw is not True:
                self.err(line, "faq: write true")
            return (), None
        if when == "regex":
            if not isinstance(raw, str):
                self.err(line, "regex: a pattern as text")
                return None
            try:
                pattern = re.compile(raw, re.IGNORECASE)
            except re.error as e:
                self.err(line, f"regex: invalid pattern: {e}")
                return None
            for group in pattern.groupindex:
                self.slot_name(group, line)
            return (), pattern
        values = self.words(raw, line, when)
        if when in ("text", "keywords") and not all(normalize(v) for v in values):
            self.err(line, f"{when}: a value has no letters or digits, so it can never match")
        if when == "kind":
            for v in values:
                if v not in MESSAGE_KINDS:
                    kinds = ", ".join(sorted(MESSAGE_KINDS))
                    self.err(line, f"kind: unknown message kind {v!r}; use {kinds}")
        return values, None

    def reprompts(self, parent: YMap, key: str) -> tuple[Reprompt, ...]:
        raw = parent[key]
        line0 = parent.line_of(key)
        items: list[tuple[Any, int]]
        if isinstance(raw, YList):
            items = [(v, raw.line_of(i)) for i, v in enumerate(raw)]
        else:
            items = [(raw, line0)]
        if not items:
            self.err(line0, "otherwise: needs at least one re-prompt")
            return ()
        out = []
        for i, (item, line) in enumerate(items):
            if isinstance(item, YMap) and any(k in item for k in REPROMPT_KEYS):
                self.keys(item, REPROMPT_KEYS, "re-prompt")
                says = self.says(item, "say")
                repeat = item.get("repeat") is True
                go = self.scalar(item, "go")
                if go is not None and i != len(items) - 1:
                    self.err(item.line_of("go"), "otherwise: only the last re-prompt may have go:")
                out.append(Reprompt(line, says, repeat, go, item.line_of("go")))
            else:
                out.append(Reprompt(line, self.say_items(item, line)))
        return tuple(out)

    # --- messages ----------------------------------------------------------------------------

    def says(self, parent: YMap, key: str) -> tuple[Say, ...]:
        if key not in parent:
            return ()
        return self.say_items(parent[key], parent.line_of(key))

    def say_items(self, raw: Any, line: int) -> tuple[Say, ...]:
        if isinstance(raw, YList):
            found = [self.message(v, raw.line_of(i)) for i, v in enumerate(raw)]
            return tuple(s for s in found if s is not None)
        one = self.message(raw, line)
        return (one,) if one is not None else ()

    def message(self, raw: Any, line: int) -> Say | None:
        if isinstance(raw, str):
            self.template(raw, line, LIMITS["text"], "text")
            return Say(line, "text", raw)
        if not isinstance(raw, YMap):
            self.err(line, "say: text, or a mapping with text: and buttons: or list:")
            return None
        line = raw.line
        self.keys(raw, ("text", "buttons", "list", "header", "footer"), "message")
        body = self.scalar(raw, "text", required=True) or ""
        if "buttons" in raw and "list" in raw:
            self.err(line, "a message has buttons: or list:, not both")
            return None
        header = self.scalar(raw, "header")
        footer = self.scalar(raw, "footer")
        for key, value in (("header", header), ("footer", footer)):
            if value is not None:
                self.template(value, raw.line_of(key), LIMITS[key], key)
        if "buttons" in raw:
            self.template(body, raw.line_of("text"), LIMITS["button_body"], "text with buttons")
            buttons = self.buttons(raw)
            return Say(line, "buttons", body, buttons=buttons, header=header, footer=footer)
        if "list" in raw:
            self.template(body, raw.line_of("text"), LIMITS["list_body"], "text of a list")
            button, sections = self.list(raw)
            return Say(
                line,
                "list",
                body,
                list_button=button,
                sections=sections,
                header=header,
                footer=footer,
            )
        if header is not None or footer is not None:
            self.err(line, "header: and footer: need buttons: or list:")
        self.template(body, raw.line_of("text"), LIMITS["text"], "text")
        return Say(line, "text", body)

    def buttons(self, raw: YMap) -> tuple[tuple[str, str], ...]:
        items = raw["buttons"]
        line = raw.line_of("buttons")
        if not isinstance(items, YList) or not items:
            self.err(line, "buttons: a list of 1 to 3 buttons")
            return ()
        if len(items) > LIMITS["buttons"]:
            self.err(
                line,
                f"{len(items)} buttons: WhatsApp allows at most {LIMITS['buttons']}"
                " (use list: for more)",
            )
        out = [self.option(item, items.line_of(i), "button") for i, item in enumerate(items)]
        found = tuple((i, t) for i, t, _d in (o for o in out if o is not None))
        self.unique(found, line, "button")
        return found

    def list(
        self, raw: YMap
    ) -> tuple[str, tuple[tuple[str | None, tuple[tuple[str, str, str | None], ...]], ...]]:
        spec = raw["list"]
        line = raw.line_of("list")
        if not isinstance(spec, YMap):
            self.err(line, "list: a mapping with button: and rows: (or sections:)")
            return "", ()
        self.keys(spec, ("button", "rows", "sections"), "list")
        button = self.scalar(spec, "button") or "Options"
        self.template(button, spec.line_of("button"), LIMITS["list_button"], "list button")
        sections: list[tuple[str | None, tuple[tuple[str, str, str | None], ...]]] = []
        if "rows" in spec and "sections" in spec:
            self.err(line, "list: rows: or sections:, not both")
        elif "rows" in spec:
            sections.append((None, self.rows(spec, "rows")))
        elif isinstance(spec.get("sections"), YList):
            secs = spec["sections"]
            if len(secs) > LIMITS["list_sections"]:
                self.err(
                    spec.line_of("sections"),
                    f"{len(secs)} sections: at most {LIMITS['list_sections']}",
                )
            for i, sec in enumerate(secs):
                if not isinstance(sec, YMap):
                    self.err(secs.line_of(i), "a section is a mapping with title: and rows:")
                    continue
                self.keys(sec, ("title", "rows"), "section")
                title = self.scalar(sec, "title")
                if title is not None:
                    self.template(
                        title, sec.line_of("title"), LIMITS["section_title"], "section title"
                    )
                sections.append((title, self.rows(sec, "rows")))
        else:
            self.err(line, "list: needs rows: or sections:")
        total = sum(len(rows) for _t, rows in sections)
        if total > LIMITS["list_rows"]:
            self.err(
                line, f"{total} list rows: WhatsApp allows at most {LIMITS['list_rows']} in all"
            )
        self.unique(tuple((r[0], r[1]) for _t, rows in sections for r in rows), line, "row")
        return button, tuple(sections)

    def rows(self, parent: YMap, key: str) -> tuple[tuple[str, str, str | None], ...]:
        items = parent.get(key)
        if not isinstance(items, YList) or not items:
            self.err(parent.line_of(key), f"{key}: a non-empty list of rows")
            return ()
        out = [self.option(item, items.line_of(i), "row") for i, item in enumerate(items)]
        return tuple(o for o in out if o is not None)

    def option(self, item: Any, line: int, what: str) -> tuple[str, str, str | None] | None:
        """A button or list row: 'Title' (id derived) or {id:, title:, description:}."""
        title_limit = LIMITS["button_title" if what == "button" else "row_title"]
        id_limit = LIMITS["button_id" if what == "button" else "row_id"]
        if isinstance(item, str):
            title, ident, desc = item, slug(item), None
        elif isinstance(item, YMap):
            self.keys(
                item, ("id", "title", "description") if what == "row" else ("id", "title"), what
            )
            title = self.scalar(item, "title", required=True) or ""
            ident = self.scalar(item, "id") or slug(title)
            desc = self.scalar(item, "description")
            if desc is not None:
                self.template(
                    desc, item.line_of("description"), LIMITS["row_description"], "row description"
                )
        else:
            self.err(line, f"a {what} is a title, or a mapping with id: and title:")
            return None
        if not ident:
            self.err(line, f"{what} {title!r} needs an id: (its title has no letters or digits)")
        elif len(ident) > id_limit:
            self.err(line, f"{what} id longer than {id_limit} characters")
        self.template(title, line, title_limit, f"{what} title")
        return ident, title, desc

    def unique(self, options: tuple[tuple[str, str], ...], line: int, what: str) -> None:
        ids = [i for i, _t in options]
        titles = [t for _i, t in options]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            self.err(line, f"{what} id {dup!r} is used twice in one message")
        for dup in sorted({t for t in titles if titles.count(t) > 1}):
            self.err(line, f"{what} title {dup!r} is used twice in one message")

    def template(
        self, text: str, line: int, limit: int, what: str, file: str | None = None
    ) -> None:
        names = placeholders(text)
        for name in names:
            self.used.append((line, file or self.file, name))
        if stray_brace(text):
            self.err(
                line,
                f"{what}: stray brace; write {{{{ or }}}} for a literal brace,"
                " {slot} or {slot|default} for a value",
                file,
            )
        size = static_length(text)
        if size > limit:
            self.err(line, f"{what} is {size} characters; WhatsApp allows {limit}", file)
        elif not names and not text.strip():
            self.err(line, f"{what} is empty", file)

    # --- small values ------------------------------------------------------------------------

    def sets(self, parent: YMap) -> tuple[tuple[str, str], ...]:
        raw = parent.get("set")
        if raw is None:
            return ()
        if not isinstance(raw, YMap):
            self.err(parent.line_of("set"), "set: a mapping of slot names to values")
            return ()
        out = []
        for key, value in raw.items():
            line = raw.line_of(key)
            if not isinstance(value, str | None):
                self.err(line, f"set: {key} must be text")
                continue
            if self.slot_name(key, line):
                if value:
                    self.template(value, line, 10_000, f"set {key}")
                out.append((key, value or ""))
        return tuple(out)

    def slot_name(self, name: str, line: int) -> bool:
        if not SLOT.fullmatch(name) or name in BUILTIN_VALUES:
            self.err(
                line, f"slot name {name!r}: use letters, digits and '_' (not name, text or phone)"
            )
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

    # --- whole-flow checks -------------------------------------------------------------------

    @staticmethod
    def all_branches(
        states: dict[str, StateSpec], anywhere: tuple[Branch, ...]
    ) -> Iterable[Branch]:
        yield from anywhere
        for s in states.values():
            yield from s.on

    def edges(self, spec: FlowSpec, state: StateSpec) -> Iterable[tuple[str, int]]:
        if state.then:
            yield state.then, state.then_line
        for b in state.on:
            if b.go:
                yield b.go, b.go_line
        if state.on:
            for b in spec.anywhere:
                if b.go:
                    yield b.go, b.go_line
            for r in state.otherwise or spec.otherwise:
                if r.go:
                    yield r.go, r.go_line

    def targets(self, spec: FlowSpec) -> None:
        seen: set[tuple[str, int]] = set()
        for state in spec.states.values():
            for target, line in self.edges(spec, state):
                if target not in spec.states and (target, line) not in seen:
                    seen.add((target, line))
                    self.err(
                        line, f"go to unknown state {target!r}{self.hint(target, spec.states)}"
                    )

    def reachability(self, spec: FlowSpec) -> None:
        seen = {spec.start}
        todo = [spec.start]
        while todo:
            state = spec.states[todo.pop()]
            for target, _line in self.edges(spec, state):
                if target in spec.states and target not in seen:
                    seen.add(target)
                    todo.append(target)
        for name, state in spec.states.items():
            if name not in seen:
                self.err(state.line, f"state {name!r} is unreachable from start {spec.start!r}")

    def then_cycles(self, spec: FlowSpec) -> None:
        """States linked only by then: would loop forever without waiting for the customer."""
        for name, state in spec.states.items():
            path = [name]
            current = state
            while current.then and current.then in spec.states:
                if current.then in path:
                    if current.then == name and name == min(path):
                        self.err(
                            state.then_line,
                            f"then: loop {' -> '.join([*path, name])} never waits for the customer",
                        )
                    break
                path.append(current.then)
                current = spec.states[current.then]

    def choices(self, spec: FlowSpec) -> None:
        """A choice branch must name a button or row its state (or a re-prompt) actually sends."""
        for state in spec.states.values():
            offered = {i for say in offered_says(spec, state) for i, _t in say.choices()}
            for b in state.on:
                if b.when != "choice":
                    continue
                for value in b.values:
                    if value not in offered:
                        known = ", ".join(sorted(offered)) or "none"
                        self.err(
                            b.line,
                            f"choice {value!r} is not a button or row of state"
                            f" {state.name!r} (it offers: {known})",
                        )


def prompt_of(spec: FlowSpec, state: StateSpec) -> tuple[Say, ...]:
    """What a waiting state asked: its own messages, or those of the steps leading to it."""
    if state.says:
        return state.says
    return tuple(
        say for other in spec.states.values() if other.then == state.name for say in other.says
    )


def offered_says(spec: FlowSpec, state: StateSpec) -> Iterable[Say]:
    """Every message a waiting state may show before the customer answers it."""
    yield from prompt_of(spec, state)
    for r in state.otherwise or spec.otherwise:
        yield from r.says


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", normalize(title)).strip("_")[:64]
