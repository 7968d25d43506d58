"""Reading a flow file into a checked `FlowSpec`, every mistake at its file:line."""

from __future__ import annotations

import ast
import hashlib
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import regex

from ..actions import BUILTINS, Actions
from ..errors import Problem, errors_in
from ..llm.prompts import FIELD_TYPES
from ..outbound import LIMITS
from ..settings import parse_duration
from .checks import (
    all_branches,
    choices,
    hidden_anywhere,
    reachability,
    targets,
    then_cycles,
    understood,
    unset_slots,
)
from .data import read_data
from .expr import Expr
from .reading import Reading
from .says import ROW_NAMES, say_items, says, template
from .source import SourceError, YList, YMap, decode, load
from .spec import (
    ACTION_KEYS,
    BRANCH_KEYS,
    CONDITIONS,
    DEFAULT_HANDBACK,
    DEFAULT_REPROMPT,
    FLOW_KEYS,
    MESSAGE_KINDS,
    NAME,
    REPROMPT_KEYS,
    SLOT,
    STATE_KEYS,
    TIMEOUT_KEYS,
    ActionCall,
    Arg,
    Branch,
    FlowSpec,
    Reprompt,
    Route,
    Say,
    SetValue,
    StateSpec,
    SubflowCall,
    Timeout,
)
from .templates import FILE as TEMPLATES_FILE
from .templates import Template, read_templates
from .text import Faq, FaqEntry, Keywords, normalize
from .types import TYPES, Bounds
from .values import Value

MAX_WAIT = 400 * 86400.0  # the longest after: a flow may set
MAX_WITHIN = 300.0  # the longest an action may take
DEFAULT_WITHIN = 10.0
FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def read_flow(
    path: Path,
    actions: Actions | None = None,
    outputs: dict[str, frozenset[str]] | None = None,
    *,
    keep: bool = False,
    templates: dict[str, Template] | None = None,
) -> tuple[FlowSpec | None, list[Problem]]:
    """Read and check one flow file: (spec, []) when valid, (None, problems) otherwise.
    Its action: steps are checked against `actions` (the built-ins when not given); the slots
    its call: steps get back, against `outputs` (each flow's outputs: read from the files
    beside it when not given). With `keep`, the spec comes back even when it has errors."""
    if outputs is None:
        outputs = peek_outputs(path.parent)
    if templates is None:
        templates, _problems = read_templates(path.parent)  # reported with the folder's checks
    reader = FlowReader(path, actions, outputs, templates)
    spec = reader.flow()
    problems = sorted(reader.problems, key=lambda p: (p.file, p.line))
    if errors_in(problems) and not keep:  # keep: what was read, for checks across flows
        return None, problems
    return spec, problems  # warnings only: the flow is valid


def peek_outputs(folder: Path) -> dict[str, frozenset[str]]:
    """The outputs: each flow in `folder` declares, read without checking the rest, so that a
    caller knows which of its slots a call: fills before every flow has been read."""
    found: dict[str, frozenset[str]] = {}
    for file in sorted(folder.glob("*.y*ml")):
        if file.name == TEMPLATES_FILE:
            continue
        try:
            doc, _problems = load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, SourceError):
            continue
        raw = doc.get("outputs") if isinstance(doc, YMap) else None
        if isinstance(raw, YList):
            found[file.stem] = frozenset(v for v in raw if isinstance(v, str))
    return found


class FlowReader(Reading):
    def __init__(
        self,
        path: Path,
        actions: Actions | None = None,
        outputs: dict[str, frozenset[str]] | None = None,
        templates: dict[str, Template] | None = None,
    ) -> None:
        super().__init__(str(path), templates)
        self.outputs_of = outputs or {}
        self.path = path
        self.actions = actions
        self.subflows: list[SubflowCall] = []  # checked against the other flows (links)
        self.tables: dict[str, Value] = {}  # the flow's data, by name
        self.output_lines: dict[str, int] = {}

    # --- document --------------------------------------------------------------------------

    def flow(self) -> FlowSpec | None:
        name = self.path.stem
        if not NAME.fullmatch(name):
            self.err(1, f"flow file name {name!r} must be letters, digits, '_', '-' or '.'")
        try:
            raw = decode(self.path.read_bytes())
        except OSError as e:
            self.err(1, f"cannot read flow: {e}")
            return None
        except SourceError as e:
            self.err(e.line, e.message)
            return None
        doc = self.yaml(raw, self.file)
        if doc is None:
            if not self.problems:
                self.err(1, "the file holds no flow (it is empty or only comments)")
            return None
        if not isinstance(doc, YMap):
            self.err(getattr(doc, "line", 1), "a flow must be a mapping with start: and states:")
            return None
        self.keys(doc, FLOW_KEYS, "flow")
        data, data_text = read_data(self, self.path.parent, doc)
        self.tables = data
        faq, faq_text = self.faq(doc)
        slots = self.slot_defaults(doc)
        inputs = self.inputs(doc)
        outputs = self.outputs(doc)
        anywhere = self.branches(doc, "anywhere", "anywhere") if "anywhere" in doc else ()
        otherwise = self.reprompts(doc, "otherwise") if "otherwise" in doc else None
        handback = says(self, doc, "handback")
        states = self.states(doc)
        start = self.scalar(doc, "start", required=True) or ""
        if faq is None:
            self.no_faq(states, anywhere)
        spec = FlowSpec(
            name=name,
            path=self.file,
            version=hashlib.sha256(
                "\0".join((raw, faq_text, data_text) if data_text else (raw, faq_text)).encode()
            ).hexdigest()[:12],
            start=start,
            states=states,
            anywhere=anywhere,
            otherwise=otherwise
            or (Reprompt(doc.line, (Say(doc.line, "text", DEFAULT_REPROMPT),), repeat=True),),
            faq=faq,
            slots=slots,
            handback=handback or (Say(doc.line, "text", DEFAULT_HANDBACK),),
            inputs=inputs,
            outputs=outputs,
            data=data,
            read=self.read_receipts(doc),
        )
        if start and start not in states:
            self.err(
                doc.line_of("start"), f"start: unknown state {start!r}{self.hint(start, states)}"
            )
        self.check(spec)
        return spec

    def read_receipts(self, doc: YMap) -> str | None:
        """read: true (blue ticks on each message the bot answers) or read: typing (and the
        typing indicator until the reply)."""
        value = doc.get("read")
        if value is None or value is False:
            return None
        if value is True:
            return "read"
        if value == "typing":
            return "typing"
        self.err(doc.line_of("read"), "read: true, false or typing")
        return None

    def check(self, spec: FlowSpec) -> None:
        """The checks that need the whole flow: routes, reachability, loops, names."""
        targets(self, spec)
        if spec.start in spec.states:
            reachability(self, spec)
            then_cycles(self, spec)
        choices(self, spec)
        understood(self, spec)
        hidden_anywhere(self, spec)
        unset_slots(self, spec)
        known = self.known()
        used, exprs = list(self.used), list(self.exprs)
        for fields, scoped_used, scoped_exprs in self.scoped:
            if fields is not None:  # rows of a data table: its fields, and item, are names too
                self.row_names(fields, known, scoped_used, scoped_exprs)
        self.record_fields(exprs)
        for line, file, name_ in used:
            if name_ not in known:
                self.err(
                    line, f"unknown placeholder {{{name_}}}: no step sets a slot by that name", file
                )
        self.check_calls()
        for output in spec.outputs:
            if output not in self.slots:
                self.err(
                    self.output_lines.get(output, 1),
                    f"outputs: {output!r} is not a slot this flow sets",
                )
        for line, file, expr in exprs:
            for name_ in sorted(expr.names - known):
                self.err(
                    line,
                    f"unknown name {name_!r} in {expr.source!r}: no step sets a slot by that"
                    f" name{self.hint(name_, sorted(known))}",
                    file,
                )

    def row_names(
        self,
        fields: frozenset[str],
        known: set[str],
        used: list[tuple[int, str, str]],
        exprs: list[tuple[int, str, Expr]],
    ) -> None:
        """The templates of rows built from a table: a name that is neither one of its fields
        nor known elsewhere is most likely a misspelt field."""
        names = [(ln, f, n) for ln, f, n in used] + [
            (ln, f, n) for ln, f, e in exprs for n in sorted(e.names)
        ]
        have = ", ".join(sorted(fields))
        for line, file, name_ in names:
            if name_ not in fields | ROW_NAMES | known:
                hint = self.hint(name_, sorted(fields | ROW_NAMES))
                self.err(line, f"unknown field {name_!r}{hint}: the records have {have}", file)

    def record_fields(self, exprs: list[tuple[int, str, Expr]]) -> None:
        """`shop.nmae`, where shop is a data record: its fields are known when the flow loads."""
        for line, file, expr in exprs:
            for node in ast.walk(expr.tree):
                if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                    continue
                record = self.tables.get(node.value.id)
                if isinstance(record, dict) and node.attr not in record:
                    hint = self.hint(node.attr, sorted(record))
                    self.err(
                        line,
                        f"{node.value.id}.{node.attr}: the data {node.value.id!r} has no field"
                        f" {node.attr!r}{hint} (it has {', '.join(sorted(record))})",
                        file,
                    )

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
            template(self, answer, item.line_of("answer"), LIMITS["text"], "answer", file=file)
            entries.append(
                FaqEntry(str(item.get("question") or answer[:40]), Keywords.of(keywords), answer)
            )
        return Faq(tuple(entries)), text

    def slot_defaults(self, doc: YMap) -> dict[str, SetValue]:
        raw = doc.get("slots")
        if raw is None:
            return {}
        if not isinstance(raw, YMap):
            self.err(doc.line_of("slots"), "slots: a mapping of slot names to starting values")
            return {}
        out: dict[str, SetValue] = {}
        for key, value in raw.items():
            line = raw.line_of(key)
            if not isinstance(value, str | None):
                self.err(line, f"slots: {key} must be text, or an expression after =")
            elif self.slot_name(key, line):
                computed = self.value(value or "", line, f"slot {key}")
                if computed is not None:
                    out[key] = computed
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
            for k in ("on", "then", "handoff", "end", "action", "flow", "answer", "extract")
            if k in body and body[k] not in (None, False)
        ]
        if len(modes) != 1:
            what = "none" if not modes else " and ".join(modes)
            self.err(
                line,
                f"state {name!r} needs exactly one of on:, then:, action:, answer:, extract:,"
                f" flow:, handoff: true or end: true (has {what})",
            )
        if "action" in body:
            action = self.action(body)
        elif "answer" in body or "extract" in body:
            action = self.model_step(body, "answer" if "answer" in body else "extract")
        else:
            action = None
        if "on_unknown" in body and "answer" not in body:
            self.err(body.line_of("on_unknown"), "on_unknown: belongs to a step with answer:")
        understand = self.understand(body) if "understand" in body else None
        call = self.step_call(body)
        for flag in ("handoff", "end"):
            if flag in body and not isinstance(body[flag], bool):
                self.err(body.line_of(flag), f"{flag}: write true or false")
        then = self.routes(body, "then")
        on = self.branches(body, "on", f"state {name!r}") if "on" in body else ()
        if isinstance(body.get("on"), YList) and not body["on"]:
            self.err(body.line_of("on"), "on: needs at least one branch")
        after = self.duration(body, "after")
        if after is not None and "then" not in body:
            self.err(body.line_of("after"), "after: delays then:; this step has no then:")
        waits = "on" in body or (after is not None and "then" in body)
        otherwise = self.reprompts(body, "otherwise") if "otherwise" in body else None
        if otherwise is not None and not waits:
            self.err(
                body.line_of("otherwise"), "otherwise: only applies to a state that waits (on:)"
            )
        timeout = self.timeouts(body) if "timeout" in body else ()
        if "timeout" in body and "on" not in body:
            self.err(
                body.line_of("timeout"),
                "timeout: only applies to a step that waits for the customer (on:);"
                " to wait before moving on, write after: with then:",
            )
        return StateSpec(
            name=name,
            line=line,
            says=says(self, body, "say"),
            sets=self.sets(body),
            on=on,
            then=then,
            after=after,
            timeout=timeout,
            otherwise=otherwise,
            handoff=body.get("handoff") is True,
            end=body.get("end") is True,
            action=action,
            call=call,
            understand=understand,
        )

    def duration(self, parent: YMap, key: str, longest: float = MAX_WAIT) -> float | None:
        """A duration like 90s, 30m, 24h or 2d (at least a second, at most `longest`)."""
        raw = parent.get(key)
        if key not in parent:
            return None
        line = parent.line_of(key)
        if not isinstance(raw, str):
            self.err(line, f"{key}: a duration like 30m, 24h or 2d")
            return None
        try:
            seconds = parse_duration(raw)
        except ValueError as e:
            self.err(line, f"{key}: {e}")
            return None
        if not 1 <= seconds <= longest:
            most = f"{longest // 86400:.0f}d" if longest >= 86400 else f"{longest:.0f}s"
            self.err(line, f"{key}: from 1s to {most}")
            return None
        return seconds

    # --- actions -----------------------------------------------------------------------------

    def check_calls(self) -> None:
        actions = self.actions or Actions({b.name: b for b in BUILTINS})
        for line, name, given in self.calls:
            definition = actions.get(name)
            if definition is None and actions.broken:
                continue  # actions.py did not import (reported there): it may well define it
            if definition is None:
                known = actions.names()
                self.err(
                    line,
                    f"unknown action {name!r}{self.hint(name, known)}"
                    f" (known: {', '.join(known)}; yours go in actions.py beside the flows)",
                )
                continue
            for message in definition.problems_with(given):
                self.err(line, message)

    def action(self, body: YMap) -> ActionCall | None:
        """action: name, with: parameters, save: where the result goes, within: how long it may
        take, then on_done: and on_error: (both required: business systems fail)."""
        line = body.line_of("action")
        name = self.scalar(body, "action")
        if name is None:
            return None
        if not NAME.fullmatch(name):
            self.err(line, f"action: {name!r} is not an action name")
            return None
        if name.startswith("llm."):
            self.err(
                line, f"action: {name!r}: a model is asked by answer:, understand: or extract:"
            )
            return None
        args = self.arguments(body, "parameter names")
        self.calls.append((line, name, dict(args)))
        within = self.duration(body, "within", MAX_WITHIN) or DEFAULT_WITHIN
        save = self.action_save(body)
        done = self.routes(body, "on_done")
        error = self.routes(body, "on_error")
        for key, when in (("on_done", "succeeds"), ("on_error", "fails")):
            if key not in body:
                self.err(line, f"action: needs {key}: (where to go when the call {when})")
        self.slots.add("error")
        return ActionCall(line, name, args, save, within, done, error)

    def no_faq(self, states: dict[str, StateSpec], anywhere: tuple[Branch, ...]) -> None:
        """The flow names no faq: file: nothing may use one."""
        for b in all_branches(states, anywhere):
            if b.when == "faq":
                self.err(b.line, "faq: true, but the flow names no faq: file")
        for state in states.values():
            if state.action is not None and state.action.faq:
                self.err(state.action.line, "answer: faq: true, but the flow names no faq: file")

    def model_step(self, body: YMap, kind: str) -> ActionCall | None:
        """answer: (a question answered from KNOWLEDGE_DIR) or extract: (fields filled from
        free text): a model's turn, bounded by LLM_TIMEOUT_S, then on_done:, on_unknown:
        (answer: the documents do not hold it; default on_error:) or on_error: (no model could
        be asked, or none answered)."""
        line = body.line_of(kind)
        raw = body[kind]
        for key in ("with", "within"):
            if key in body:
                self.err(
                    body.line_of(key),
                    f"{key}: does not apply to {kind}: (LLM_TIMEOUT_S bounds a model's turn)",
                )
        fields: tuple[tuple[str, str], ...] = ()
        many = False
        faq = False
        if kind == "answer":
            args = self.answer_args(raw, line)
            faq = isinstance(raw, YMap) and raw.get("faq") is True
        else:
            found = self.extract_args(raw, line)
            if found is None:
                return None
            args, fields, many = found
        save = self.action_save(body)
        if kind == "answer" and save is not None and not isinstance(save, str):
            self.err(body.line_of("save"), "save: on answer: names one slot (the answer's text)")
            save = None
        if kind == "extract" and many and not isinstance(save, str):
            self.err(line, "extract: with many: true needs save: (the slot for the list)")
        if kind == "extract" and save is None:
            self.slots.update(name for name, _kind in fields)
        for key, when in (("on_done", "answers"), ("on_error", "cannot answer")):
            if key not in body:
                self.err(line, f"{kind}: needs {key}: (where to go when the model {when})")
        self.slots.add("error")
        return ActionCall(
            line,
            f"llm.{kind}",
            args,
            save,
            DEFAULT_WITHIN,
            self.routes(body, "on_done"),
            self.routes(body, "on_error"),
            llm=kind,
            unknown=self.routes(body, "on_unknown") if kind == "answer" else (),
            fields=fields,
            many=many,
            faq=faq,
        )

    def answer_args(self, raw: Any, line: int) -> tuple[tuple[str, Arg], ...]:
        """answer: true (the customer's message), a text or expression, or
        {question: ..., format: json | text, faq: true}."""
        question: Any = "{text}"
        form: Any = "json"
        if isinstance(raw, str):
            question = raw
        elif isinstance(raw, YMap):
            self.keys(raw, ("question", "format", "faq"), "answer:")
            question = raw.get("question", "{text}")
            form = raw.get("format", "json")
            if form not in ("json", "text"):
                self.err(raw.line_of("format"), "answer: format: json or text")
                form = "json"
            if "faq" in raw and raw["faq"] is not True:
                self.err(raw.line_of("faq"), "answer: faq: write true (or leave it out)")
        elif raw is not True:
            self.err(line, "answer: true, the question (a text), or {question: ..., format: ...}")
        if not isinstance(question, str):
            self.err(line, "answer: question: a text or an expression after =")
            question = "{text}"
        value = self.value(question, line, "answer: question")
        return (("question", value if value is not None else "{text}"), ("format", str(form)))

    def extract_args(
        self, raw: Any, line: int
    ) -> tuple[tuple[tuple[str, Arg], ...], tuple[tuple[str, str], ...], bool] | None:
        """extract: {fields: {name: type, ...}, many: true|false, text: "{text}"}."""
        if not isinstance(raw, YMap):
            self.err(line, "extract: a mapping with fields: (name: type), many: and text:")
            return None
        self.keys(raw, ("fields", "many", "text"), "extract:")
        declared = raw.get("fields")
        if not isinstance(declared, YMap) or not declared:
            self.err(line, "extract: needs fields: (a mapping of names to types)")
            return None
        fields = []
        for name, kind in declared.items():
            at = declared.line_of(name)
            if not self.slot_name(str(name), at):
                continue
            if kind not in FIELD_TYPES:
                self.err(
                    at,
                    f"extract: field {name}: type {kind!r}: use one of {', '.join(FIELD_TYPES)}",
                )
                continue
            fields.append((str(name), str(kind)))
        many = raw.get("many", False)
        if not isinstance(many, bool):
            self.err(raw.line_of("many"), "extract: many: true or false")
            many = False
        text = raw.get("text", "{text}")
        value = self.value(text, line, "extract: text") if isinstance(text, str) else None
        if value is None:
            if not isinstance(text, str):
                self.err(raw.line_of("text"), "extract: text: a text or an expression after =")
            value = "{text}"
        args: tuple[tuple[str, Arg], ...] = (
            ("text", value),
            ("fields", dict(fields)),
            ("many", many),
        )
        return args, tuple(fields), many

    def understand(self, body: YMap) -> tuple[tuple[str, str], ...] | None:
        """understand: true (the step's choices), or intents {id: what the customer means}."""
        raw = body.get("understand")
        line = body.line_of("understand")
        if "on" not in body:
            self.err(line, "understand: applies to a step that waits for the customer (on:)")
            return None
        if raw is False or raw is None:
            return None
        if raw is True:
            return ()
        if not isinstance(raw, YMap):
            self.err(line, "understand: true, or a mapping of intent ids to what they mean")
            return None
        out = []
        for ident, meaning in raw.items():
            at = raw.line_of(ident)
            if not NAME.fullmatch(str(ident)) or len(str(ident)) > 64:
                self.err(at, f"understand: {ident!r} is not an id (letters, digits, _ . -)")
            elif not isinstance(meaning, str) or not meaning.strip() or len(meaning) > 300:
                self.err(at, f"understand: {ident}: what it means, in words (up to 300)")
            else:
                out.append((str(ident), meaning.strip()))
        return tuple(out)

    def arg(self, raw: Any, line: int, what: str, depth: int = 0) -> Arg | None:
        if depth > 8:
            self.err(line, f"{what}: nested too deeply")
            return None
        if isinstance(raw, YMap):
            out: dict[str, Arg] = {}
            for key, value in raw.items():
                arg = self.arg(value, raw.line_of(key), f"{what}.{key}", depth + 1)
                if arg is not None:
                    out[str(key)] = arg
            return out
        if isinstance(raw, YList):
            items = [self.arg(v, raw.line_of(i), what, depth + 1) for i, v in enumerate(raw)]
            return [i for i in items if i is not None]
        if isinstance(raw, bool) or raw is None:
            return raw
        if isinstance(raw, int | float):
            return Decimal(str(raw))
        if not isinstance(raw, str):
            self.err(line, f"{what}: text, a number, or an expression after =")
            return None
        return self.value(raw, line, what)

    def action_save(self, body: YMap) -> str | tuple[tuple[str, str], ...] | None:
        raw = body.get("save")
        if raw is None:
            return None
        line = body.line_of("save")
        if isinstance(raw, str):
            return raw if self.slot_name(raw, line) else None
        if not isinstance(raw, YMap) or not raw:
            self.err(line, "save: a slot for the whole result, or a mapping of slots to fields")
            return None
        out = []
        for slot, field_ in raw.items():
            item_line = raw.line_of(slot)
            if not isinstance(field_, str) or not FIELD.fullmatch(field_):
                self.err(item_line, f"save: {slot}: a field of the result, like id or order.id")
            elif self.slot_name(slot, item_line):
                out.append((slot, field_))
        return tuple(out)

    # --- sub-flows ---------------------------------------------------------------------------

    def step_call(self, body: YMap) -> SubflowCall | None:
        """A step's call: (with then:) or flow: (a jump); and the action: keys it may share."""
        call = None
        if "call" in body:
            call = self.subflow(body, body.line_of("call"))
            if "then" not in body:
                self.err(body.line_of("call"), "call: needs then: (where to go when it ends)")
            if "action" in body or "on" in body:
                self.err(body.line_of("call"), "call: is a step of its own (no action: or on:)")
        elif "flow" in body:
            call = self.subflow(body, body.line_of("flow"), jump=True)
        shared = {"with": call is not None, "save": call is not None and not call.jump}
        for key in ACTION_KEYS[1:]:
            model = ("answer" in body or "extract" in body) and key != "with"
            if key in body and "action" not in body and not model and not shared.get(key):
                self.err(body.line_of(key), f"{key}: belongs to a step with action:")
        return call

    def subflow(
        self, parent: YMap, line: int, *, jump: bool = False, branch: bool = False
    ) -> SubflowCall | None:
        """call: FLOW (or flow: FLOW, a jump) with: its inputs, save: {slot: output}. Whether
        FLOW exists and takes these inputs is checked with every flow of the folder (links)."""
        key = "flow" if jump else "call"
        name = self.scalar(parent, key)
        if name is None:
            return None
        if not NAME.fullmatch(name):
            self.err(line, f"{key}: {name!r} is not a flow name (the file's name, without .yaml)")
            return None
        args = self.arguments(parent, "the flow's inputs")
        save = self.call_save(parent) if not jump and not branch else None
        gives: frozenset[str] = frozenset()
        if not jump:
            gives = frozenset(s for s, _o in save) if save else self.outputs_of.get(name, gives)
            self.slots.update(gives)
        call = SubflowCall(line, name, args, save, jump, gives)
        self.subflows.append(call)
        return call

    def call_save(self, parent: YMap) -> tuple[tuple[str, str], ...] | None:
        raw = parent.get("save")
        if raw is None:
            return None
        if not isinstance(raw, YMap) or not raw:
            self.err(parent.line_of("save"), "save: a mapping of your slots to its outputs")
            return None
        pairs = []
        for slot, output in raw.items():
            line = raw.line_of(slot)
            if not isinstance(output, str) or not SLOT.fullmatch(output):
                self.err(line, f"save: {slot}: the name of one of its outputs")
            elif self.slot_name(slot, line):
                pairs.append((slot, output))
        return tuple(pairs)

    def arguments(self, parent: YMap, what: str) -> tuple[tuple[str, Arg], ...]:
        """with: of an action or a call: each parameter a value, template or expression."""
        raw = parent.get("with")
        if raw is None:
            return ()
        if not isinstance(raw, YMap):
            self.err(parent.line_of("with"), f"with: a mapping of {what} to values")
            return ()
        args: list[tuple[str, Arg]] = []
        for key, value in raw.items():
            arg = self.arg(value, raw.line_of(key), f"with {key}")
            if arg is not None:
                args.append((key, arg))
        return tuple(args)

    def inputs(self, doc: YMap) -> dict[str, SetValue | None]:
        """inputs: [a, b] (the caller must give them) or {a: default, b: "=expression"}."""
        raw = doc.get("inputs")
        if raw is None:
            return {}
        line = doc.line_of("inputs")
        out: dict[str, SetValue | None] = {}
        if isinstance(raw, YList):
            for i, name in enumerate(raw):
                if not isinstance(name, str):
                    self.err(raw.line_of(i), "inputs: a slot name")
                elif self.slot_name(name, raw.line_of(i)):
                    out[name] = None
            return out
        if not isinstance(raw, YMap):
            self.err(line, "inputs: a list of slot names, or a mapping of them to defaults")
            return {}
        for name, value in raw.items():
            item_line = raw.line_of(name)
            if not isinstance(value, str | None):
                self.err(item_line, f"inputs: {name} must be text, or an expression after =")
            elif self.slot_name(name, item_line):
                out[name] = None if value is None else self.value(value, item_line, f"input {name}")
        return out

    def outputs(self, doc: YMap) -> tuple[str, ...]:
        raw = doc.get("outputs")
        if raw is None:
            return ()
        items = raw if isinstance(raw, YList) else None
        if items is None or not all(isinstance(v, str) and SLOT.fullmatch(v) for v in items):
            self.err(doc.line_of("outputs"), "outputs: a list of the slots a caller gets back")
            return ()
        self.output_lines = {v: items.line_of(i) for i, v in enumerate(items)}
        return tuple(items)

    def timeouts(self, body: YMap) -> tuple[Timeout, ...]:
        """The silence ladder: rungs by growing after:, each says, sets and maybe goes."""
        raw = body["timeout"]
        line0 = body.line_of("timeout")
        if isinstance(raw, YMap):
            raw_items: list[tuple[Any, int]] = [(raw, line0)]
        elif isinstance(raw, YList) and raw:
            raw_items = [(v, raw.line_of(i)) for i, v in enumerate(raw)]
        else:
            self.err(line0, "timeout: a rung {after: 30m, say: ...}, or a list of them")
            return ()
        out: list[Timeout] = []
        for item, line in raw_items:
            if not isinstance(item, YMap):
                self.err(line, "timeout: a rung is a mapping like {after: 30m, say: ..., go: ...}")
                continue
            self.keys(item, TIMEOUT_KEYS, "timeout rung")
            after = self.duration(item, "after")
            if after is None:
                if "after" not in item:
                    self.err(item.line, "timeout: each rung needs after: (30m, 24h ...)")
                continue
            if out and after <= out[-1].after:
                self.err(
                    item.line_of("after"),
                    "timeout: each rung's after: must be longer than the one before"
                    " (all count from when the step began waiting)",
                )
                continue
            routes = self.routes(item, "go")
            out.append(Timeout(item.line, after, says(self, item, "say"), self.sets(item), routes))
        for rung in out[:-1]:
            if rung.routes:
                self.err(
                    rung.line, "timeout: a rung with go: leaves the step; later rungs never run"
                )
        return tuple(out)

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
        if len(conds) > 1 or (not conds and "when" not in item):
            self.err(
                line,
                f"a branch needs one of {', '.join(CONDITIONS)}, or when: alone (has {len(conds)})",
            )
            return None
        guard = None
        if "when" in item:
            guard = self.expression(item["when"], item.line_of("when"))
            if guard is None:
                return None
        when = conds[0] if conds else "when"
        values: tuple[str, ...] = ()
        pattern = None
        if conds:
            condition = self.condition(when, item[when], item.line_of(when))
            if condition is None:
                return None
            values, pattern = condition
        if values == ("choice",):  # type: choice from: a list the step builds rows from
            source = self.scalar(item, "from")
            if source is None:
                self.err(line, "type: choice needs from: (the data table or list of the rows)")
                return None
            values = ("choice", source)
        elif "from" in item:
            self.err(item.line_of("from"), "from: belongs to a branch with type: choice")
        save = self.scalar(item, "save")
        if save is not None:
            self.slot_name(save, item.line_of("save"))
        bounds = self.bounds(item, values[0] if when == "type" and values else None)
        call = self.subflow(item, item.line_of("call"), branch=True) if "call" in item else None
        if "with" in item and "call" not in item:
            self.err(item.line_of("with"), "with: belongs to a branch with call:")
        if call is not None and "go" in item:
            self.err(
                item.line_of("go"),
                "a branch with call: comes back to this step when that flow ends; it has no go:",
            )
        return Branch(
            line=line,
            when=when,
            values=values,
            pattern=pattern,
            guard=guard,
            says=says(self, item, "say"),
            sets=self.sets(item),
            save=save,
            routes=self.routes(item, "go"),
            bounds=bounds,
            call=call,
        )

    def bounds(self, item: YMap, kind: str | None) -> Bounds | None:
        """min: and max: of a typed branch: a number's range, or a text's length."""
        found: dict[str, Decimal] = {}
        for key in ("min", "max"):
            if key not in item:
                continue
            line = item.line_of(key)
            if kind not in ("integer", "number", "text"):
                self.err(line, f"{key}: belongs to a branch with type: integer, number or text")
                continue
            raw = item[key]
            try:
                if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                    raise ValueError
                found[key] = Decimal(str(raw).strip())
                if not found[key].is_finite():
                    raise ValueError
            except (ValueError, ArithmeticError):
                self.err(line, f"{key}: a number, like 1 or 2.5")
                found.pop(key, None)
                continue
            if abs(found[key].adjusted()) > 15:
                self.err(line, f"{key}: {raw!r} is too large a bound; at most 15 digits")
            elif kind == "text" and (found[key] < 1 or found[key] != int(found[key])):
                self.err(line, f"{key}: a text's length is a whole number of characters, 1 or more")
            elif kind == "integer" and found[key] != int(found[key]):
                self.err(line, f"{key}: an integer's bound is a whole number (not {raw})")
        if "min" in found and "max" in found and found["min"] > found["max"]:
            self.err(item.line_of("max"), f"max: {found['max']} is below min: {found['min']}")
        if kind is None:
            return None
        return Bounds(found.get("min"), found.get("max"))

    def routes(self, parent: YMap, key: str) -> tuple[Route, ...]:
        """go: or then: as a step name, or as routes tried in order ending with a default:
        [{when: "total >= 50", to: free_delivery}, {to: checkout}]."""
        raw = parent.get(key)
        line = parent.line_of(key)
        if raw is None:
            return ()
        if isinstance(raw, str):
            return (Route(line, raw),)
        if not isinstance(raw, YList) or not raw:
            self.err(line, f"{key}: a step name, or a list of routes like {{when: ..., to: ...}}")
            return ()
        out = []
        for i, item in enumerate(raw):
            item_line = raw.line_of(i)
            if not isinstance(item, YMap):
                self.err(item_line, f"{key}: a route is a mapping like {{when: ..., to: step}}")
                continue
            self.keys(item, ("when", "to"), "route")
            to = self.scalar(item, "to", required=True)
            guard = None
            if "when" in item:
                guard = self.expression(item["when"], item.line_of("when"))
                if guard is None:
                    continue
            if to:
                out.append(Route(item.line_of("to"), to, guard))
        for route in out[:-1]:
            if route.guard is None:
                self.err(route.line, f"{key}: only the last route may go without when:")
        if out and out[-1].guard is not None:
            self.err(
                out[-1].line,
                f"{key}: end the routes with one that has no when: (where to go otherwise)",
            )
        return tuple(out)

    def condition(
        self, when: str, raw: Any, line: int
    ) -> tuple[tuple[str, ...], regex.Pattern[str] | None] | None:
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
                # The regex module: re's syntax (VERSION0), and a time bound on every search.
                pattern = regex.compile(raw, regex.IGNORECASE | regex.VERSION0)
            except (regex.error, OverflowError, RecursionError) as e:
                self.err(line, f"regex: invalid pattern: {e}")
                return None
            for group in pattern.groupindex:
                self.slot_name(group, line)
            return (), pattern
        if when == "type":
            return self.answer_type(raw, line)
        values = self.words(raw, line, when)
        self.comma_string(when, raw, line)
        if when in ("text", "keywords") and not all(normalize(v) for v in values):
            self.err(line, f"{when}: a value has no letters or digits, so it can never match")
        if when == "kind":
            for v in values:
                if v not in MESSAGE_KINDS:
                    kinds = ", ".join(sorted(MESSAGE_KINDS))
                    self.err(line, f"kind: unknown message kind {v!r}; use {kinds}")
        return values, None

    def comma_string(self, when: str, raw: Any, line: int) -> None:
        """`keywords: agent, human` is one phrase, "agent, human", that nobody types."""
        if when in ("text", "keywords", "choice") and isinstance(raw, str) and "," in raw:
            parts = ", ".join(p.strip() for p in raw.split(",") if p.strip())
            self.warn(
                line,
                f"{when}: {raw!r} is one {'phrase' if when == 'keywords' else 'value'},"
                f" commas included; for several, write a list: [{parts}]",
            )

    def answer_type(self, raw: Any, line: int) -> tuple[tuple[str, ...], None] | None:
        kinds = (*TYPES, "choice")  # choice: a row of a list built from: a table (the machine's)
        if raw not in kinds:
            hint = self.hint(str(raw), kinds)
            self.err(line, f"type: {raw!r} is not a type{hint}; use {', '.join(kinds)}")
            return None
        return (raw,), None

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
                messages = says(self, item, "say")
                repeat = item.get("repeat") is True
                go = self.scalar(item, "go")
                if go is not None and i != len(items) - 1:
                    self.err(item.line_of("go"), "otherwise: only the last re-prompt may have go:")
                out.append(Reprompt(line, messages, repeat, go, item.line_of("go")))
            else:
                out.append(Reprompt(line, say_items(self, item, line)))
        return tuple(out)

    def sets(self, parent: YMap) -> tuple[tuple[str, SetValue], ...]:
        raw = parent.get("set")
        if raw is None:
            return ()
        if not isinstance(raw, YMap):
            self.err(parent.line_of("set"), "set: a mapping of slot names to values")
            return ()
        out: list[tuple[str, SetValue]] = []
        for key, value in raw.items():
            line = raw.line_of(key)
            if not isinstance(value, str | None):
                self.err(line, f"set: {key} must be text, or an expression after =")
                continue
            if self.slot_name(key, line):
                computed = self.value(value or "", line, f"set {key}")
                if computed is not None:
                    out.append((key, computed))
        return tuple(out)

    def value(self, raw: str, line: int, what: str) -> SetValue | None:
        """A slot value: "= expression", or a template."""
        if raw.lstrip().startswith("="):
            return self.expression(raw.lstrip()[1:], line)
        if raw:
            template(self, raw, line, 10_000, what)
        return raw
