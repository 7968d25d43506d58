"""Actions: business code a flow calls by name (create an order, look one up, notify a kitchen).

An action is a function, plain or async, registered with `@action` in the module
`FLOWS_DIR/actions.py` (the documented rule: one module beside the flows, imported when they
load), or one of the built-ins the deployment provides (`http`). Its parameters are read from its
signature, so the validator checks a flow's `with:` against them: a parameter without a default
is required; `**kwargs` accepts any. A first parameter named `ctx` receives an `ActionContext`.

    from engine.actions import ActionContext, ActionFailed, action

    @action
    async def create_order(ctx: ActionContext, items: list, total: Decimal) -> dict:
        ...  # ctx.key is the idempotency key: the same on a replay after a crash
        return {"id": "BP-1042"}

The result (a mapping, a list, text, a number, yes/no or nothing) goes into the flow's slots;
numbers become Decimal. Raising `ActionFailed(message, kind)` takes the step's `on_error:` with
that kind; any other exception is logged with its traceback and has kind "error".
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Problem

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from zoneinfo import ZoneInfo

    from .flows.values import Value
    from .ports import Record, Records

MODULE = "actions.py"  # the module beside the flows that holds the deployment's actions


class ActionFailed(Exception):
    """Raised by an action to take its step's on_error: (the slot `error` gets kind, message)."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class ActionContext:
    """What an action knows of the call besides its parameters."""

    key: str  # idempotency key: derived from the event that caused the call, stable on replay
    contact: str
    flow: str
    state: str
    deadline: float  # Unix seconds: the call is abandoned (kind "timeout") at this time
    attempt: int = 1  # 2 and more: a replay after a crash or restart
    now: float = 0.0  # Unix seconds, on the engine's clock, when the call was made
    # The engine's store, for documents the action keeps (orders): changed with
    # compare-and-set, so a replay finds what the first attempt wrote.
    records: Records | None = None


Fn = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class DueContext:
    """What a pack's handler of due records (below) gets: the time, the store, and a way to
    message a contact from the business's side."""

    now: float  # Unix seconds, on the engine's clock
    records: Records
    # notify(contact, ident, text, template, params): `ident` names the message, so a second
    # call with it (a retry after a crash) sends nothing more; outside the 24-hour window the
    # template of templates.yaml goes with `params`, or the message is recorded as not sent.
    notify: Callable[[str, str, str, str | None, Mapping[str, str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WhenDue:
    """A pack's handler of its records of `kind` whose `due` time has come (an unpaid
    invoice's reminder). The engine calls it on its clock, outside any conversation; it must
    write the record with its next `due` (or none), else it is called again at the next look."""

    kind: str
    fn: Callable[[DueContext, Record], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ActionDef:
    name: str
    fn: Fn | None  # None: declared (a built-in) but not provided by this deployment
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    any_params: bool = False  # the function takes **kwargs
    takes_context: bool = False
    # Checks of the literal values a flow passes (a built-in's own rules, like http's url).
    check: Callable[[Mapping[str, Any]], list[str]] | None = None
    within: float | None = None  # a built-in that bounds its own time (the model's turn)
    # An action of a pack (below): it keeps its state in ctx.records only, so `flows test`
    # runs it for real, on the test's in-memory store, unless the test file says otherwise.
    in_tests: bool = False

    def problems_with(self, args: Mapping[str, Any]) -> list[str]:
        """What is wrong with a flow's `with:` (`args`: its literal values, or expressions)."""
        given = set(args)
        out = self.check(args) if self.check is not None else []
        missing = sorted(self.required - given)
        if missing:
            out.append(f"action {self.name!r} needs {', '.join(missing)} in with:")
        if not self.any_params:
            known = self.required | self.optional
            for name in sorted(given - known):
                takes = ", ".join(sorted(known)) or "no parameters"
                out.append(f"action {self.name!r} has no parameter {name!r} (it takes {takes})")
        return out

    @property
    def is_async(self) -> bool:
        return self.fn is not None and inspect.iscoroutinefunction(self.fn)

    async def call(self, ctx: ActionContext, args: Mapping[str, Any]) -> Any:
        if self.fn is None:
            raise ActionFailed(f"action {self.name!r} is not available here", "unavailable")
        positional = (ctx,) if self.takes_context else ()
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(*positional, **args)
        # A plain function may block (a database driver, requests): it runs in a thread so the
        # other contacts proceed meanwhile.
        result = await asyncio.to_thread(self.fn, *positional, **args)
        if inspect.isawaitable(result):
            return await result
        return result


def action(fn: Fn | None = None, *, name: str | None = None) -> Any:
    """Mark a function as an action, by its own name or `name`."""

    def mark(f: Fn) -> Fn:
        f.__action_name__ = name or f.__name__  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def define(fn: Fn, name: str | None = None) -> ActionDef:
    """An ActionDef from a function's signature."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    takes_context = bool(params) and params[0].name == "ctx"
    if takes_context:
        params = params[1:]
    required: set[str] = set()
    optional: set[str] = set()
    any_params = False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            any_params = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            (required if p.default is p.empty else optional).add(p.name)
    return ActionDef(
        name or str(getattr(fn, "__action_name__", fn.__name__)),
        fn,
        frozenset(required),
        frozenset(optional),
        any_params,
        takes_context,
    )


@dataclass(slots=True)
class Actions:
    """Every action a deployment's flows may call, by name."""

    by_name: dict[str, ActionDef] = field(default_factory=dict)
    broken: bool = False  # actions.py could not be imported: its names are unknown, not wrong
    due: dict[str, WhenDue] = field(default_factory=dict)  # packs' handlers, by record kind
    templates: set[str] = field(default_factory=set)  # what packs send outside the window

    def missing_templates(self, declared: Mapping[str, Any], where: str) -> list[Problem]:
        """A warning for each template a pack sends that templates.yaml (`where`) lacks."""
        return [
            Problem(
                where,
                1,
                f"no template {name!r}: the action packs send it outside the 24-hour window,"
                " and without it those messages cannot go",
                warning=True,
            )
            for name in sorted(self.templates - set(declared))
        ]

    def get(self, name: str) -> ActionDef | None:
        return self.by_name.get(name)

    def add(self, definition: ActionDef) -> None:
        self.by_name[definition.name] = definition

    def names(self) -> list[str]:
        """The names a flow's action: may call (a model's built-ins have steps of their own)."""
        return sorted(n for n in self.by_name if not n.startswith("llm."))


def _check_http(args: Mapping[str, Any]) -> list[str]:
    out = []
    url, method = args.get("url"), args.get("method")
    if isinstance(url, str) and not url.startswith(("http://", "https://", "{")):
        out.append(f"action 'http': url {url!r} must start with http:// or https://")
    methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
    if isinstance(method, str) and not method.startswith("{") and method.upper() not in methods:
        out.append(f"action 'http': method {method!r}: use one of {', '.join(methods)}")
    return out


# The built-ins' parameters, known to the validator whether or not this process provides them
# (the adapters do: see adapters/http_action.py).
HTTP = ActionDef(
    "http",
    None,
    required=frozenset({"url"}),
    optional=frozenset({"body", "method", "headers"}),
    check=_check_http,
)
# A model's turn (engine.llm.service), asked by the flow language's answer:, understand: and
# extract: steps; provided by the process only when a model is configured.
LLM_ANSWER = ActionDef(
    "llm.answer", None, required=frozenset({"question"}), optional=frozenset({"format"})
)
LLM_CLASSIFY = ActionDef("llm.classify", None, required=frozenset({"text", "choices"}))
LLM_EXTRACT = ActionDef(
    "llm.extract", None, required=frozenset({"text", "fields"}), optional=frozenset({"many"})
)
BUILTINS = (HTTP, LLM_ANSWER, LLM_CLASSIFY, LLM_EXTRACT)


class Pack:
    """Actions that come as a set, bound to files beside the flows (the ordering package's,
    bound to data/catalogue.yaml). Naming a pack in actions.py makes its actions known:

        from ordering.actions import ordering  # order.read, order.place, ...

    `load(folder, zone, media)` gives the actions by name (and any WhenDue handlers of its
    records), and the problems of the files they read (each at its file:line, reported like a
    flow's). `media` is the folder of files flows send by name (MEDIA_DIR), where a pack may
    write the files it makes (an invoice's PDF); None when nothing is to be sent (validation).
    A pack's actions keep their state in `ctx.records` only."""

    __action_pack__ = True
    names: tuple[str, ...] = ()  # its actions: known to the validator even when load fails
    # The templates of templates.yaml its messages outside the 24-hour window go as: one not
    # declared there is a warning of `flows validate` and at start.
    templates: tuple[str, ...] = ()

    def load(
        self, folder: Path, zone: ZoneInfo | None, media: Path | None = None
    ) -> tuple[dict[str, Fn | WhenDue], list[Problem]]:
        raise NotImplementedError


def load_actions(
    folder: Path,
    provided: Mapping[str, Fn] | None = None,
    zone: ZoneInfo | None = None,
    media: Path | None = None,
) -> tuple[Actions, list[Problem]]:
    """The built-ins (`provided` maps a built-in's name to its implementation), the `@action`
    functions of `folder/actions.py`, if there is one, and those of the packs it names
    (`media`: MEDIA_DIR, where they may write files flows send)."""
    actions = Actions()
    for builtin in BUILTINS:
        fn = (provided or {}).get(builtin.name)
        if fn is not None and _fits(fn, builtin):
            within = getattr(fn, "__within__", None)
            actions.add(replace(define(fn, builtin.name), check=builtin.check, within=within))
        else:
            actions.add(builtin)
    path = folder / MODULE
    if not path.is_file():
        return actions, []
    try:
        module = _import(path)
    except Exception as e:
        actions.broken = True
        return actions, [Problem(str(path), _line_of(e, path), f"cannot import actions: {e!r}")]
    problems = _defined_twice(path)
    for value in vars(module).values():
        if isinstance(value, Pack):
            problems.extend(_add_pack(actions, value, folder, zone, media))
            continue
        name = getattr(value, "__action_name__", None)
        if name is None or not callable(value):
            continue
        if name in actions.by_name:
            line = _def_line(value)
            problems.append(Problem(str(path), line, f"action {name!r} is defined twice"))
            continue
        actions.add(define(value, name))
    return actions, problems


def _add_pack(
    actions: Actions, pack: Pack, folder: Path, zone: ZoneInfo | None, media: Path | None
) -> list[Problem]:
    fns, problems = pack.load(folder, zone, media)
    actions.templates.update(pack.templates)
    for name, fn in fns.items():
        if isinstance(fn, WhenDue):
            if fn.kind in actions.due:
                where = str(folder / MODULE)
                problems.append(Problem(where, 1, f"two packs handle records of {fn.kind!r}"))
            else:
                actions.due[fn.kind] = fn
            continue
        if name in actions.by_name:
            where = str(folder / MODULE)
            problems.append(Problem(where, 1, f"action {name!r} is defined twice"))
            continue
        actions.add(replace(define(fn, name), in_tests=True))
    for name in pack.names:  # not loaded (its files have problems, reported): not unknown
        if name not in actions.by_name:
            actions.add(ActionDef(name, None, any_params=True, in_tests=True))
    return problems


def _defined_twice(path: Path) -> list[Problem]:
    """Two `def`s of one name in actions.py: Python keeps the second without a word."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, ValueError, OSError):
        return []  # the import reports it
    seen: dict[str, int] = {}
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name in seen and node.decorator_list:
                first = seen[node.name]
                out.append(
                    Problem(
                        str(path),
                        node.lineno,
                        f"{node.name!r} is defined twice (first at line {first}):"
                        " only this one would be called",
                    )
                )
            seen.setdefault(node.name, node.lineno)
    return out


def _fits(fn: Fn, builtin: ActionDef) -> bool:
    d = define(fn)
    return d.any_params or (d.required | d.optional) >= builtin.required | builtin.optional


def _import(path: Path) -> Any:
    name = f"_flow_actions_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look modules up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _line_of(error: BaseException, path: Path) -> int:
    if isinstance(error, SyntaxError) and error.lineno:
        return error.lineno
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if Path(frame.filename) == path and frame.lineno:
            return frame.lineno
    return 1


def _def_line(fn: Fn) -> int:
    try:
        return inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return 1


def to_value(data: Any, depth: int = 0) -> Value:
    """An action's result as a slot value: numbers become Decimal, keys text; anything else is
    refused with ActionFailed(kind "result")."""
    if depth > 32:
        raise ActionFailed("the result is nested too deeply", "result")
    if data is None or isinstance(data, bool | str):
        return data
    if isinstance(data, int | float | Decimal):
        number = Decimal(str(data)) if not isinstance(data, Decimal) else data
        if not number.is_finite():
            raise ActionFailed(f"the result holds {data!r}, which is not a number", "result")
        return number
    if isinstance(data, list | tuple):
        return [to_value(v, depth + 1) for v in data]
    if isinstance(data, Mapping):
        return {str(k): to_value(v, depth + 1) for k, v in data.items()}
    raise ActionFailed(f"the result holds a {type(data).__name__}, which a slot cannot", "result")
