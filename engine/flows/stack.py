"""Sub-flows at run time: a call puts the caller's place on the conversation's stack and starts
the called flow; when that flow ends, the place is taken off again and the caller carries on
with the outputs. A jump starts the other flow without keeping a place.

All of it happens inside one step of the conversation (one event): `settle` follows the calls,
jumps and returns that step asked for until the conversation rests in a step that waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .machine import Effects, Flow
from .values import Value

MAX_DEPTH = 8  # calls inside calls; the validator refuses flows that call round a circle
MAX_HOPS = 32  # flows entered in one step; past it the step fails (and is recovered from)


def settle(
    effects: Effects,
    convo: Any,
    get: Callable[[str], Flow | None],
    fallback: Flow,
) -> Effects:
    """Follow `effects.call` and the ends of called flows; return everything the turn did.
    `get` finds a flow by name; `fallback` is started when a caller's flow is gone."""
    total = effects
    current = effects
    for _hop in range(MAX_HOPS):
        request = current.call
        current.call = None
        flow = get(convo.flow)
        if request is not None:
            callee = get(request.flow)
            if callee is None:
                raise LookupError(f"flow {request.flow!r} is not loaded")
            if not request.jump:
                if len(convo.stack) >= MAX_DEPTH:
                    raise RecursionError(f"more than {MAX_DEPTH} flows called inside each other")
                convo.stack.append(_frame(convo, request.save, request.resume))
            convo.flow, convo.flow_version, convo.state = callee.name, callee.version, None
            current = callee.start(convo, request.args)
        elif convo.stack and flow is not None and flow.ends(convo.state) and not total.handoff:
            outputs = {name: convo.slots.get(name) for name in flow.spec.outputs}
            current = _back(convo, convo.stack.pop(), outputs, get, fallback)
        else:
            return total
        total.add(current)
    raise RuntimeError(f"more than {MAX_HOPS} flows entered in one step")


def _frame(convo: Any, save: tuple[tuple[str, str], ...] | None, resume: bool) -> dict[str, Any]:
    return {
        "flow": convo.flow,
        "version": convo.flow_version,
        "state": convo.state,
        "slots": convo.slots,
        "misses": convo.misses,
        "save": [list(pair) for pair in save] if save else None,
        "resume": resume,
    }


def _back(
    convo: Any,
    frame: dict[str, Any],
    outputs: dict[str, Value],
    get: Callable[[str], Flow | None],
    fallback: Flow,
) -> Effects:
    caller = get(frame["flow"])
    if caller is None:  # the caller's flow was removed meanwhile
        convo.stack.clear()
        convo.flow, convo.flow_version, convo.state = fallback.name, fallback.version, None
        return fallback.start(convo)
    convo.flow, convo.flow_version = caller.name, caller.version
    convo.state, convo.slots, convo.misses = frame["state"], frame["slots"], frame["misses"]
    if frame["version"] != caller.version and not caller.has_state(convo.state):
        return caller.start(convo)
    save = tuple((str(a), str(b)) for a, b in frame["save"]) if frame.get("save") else None
    return caller.returned(convo, outputs, save, bool(frame.get("resume")))
