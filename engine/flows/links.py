"""Checks across the flows of a folder: every call: and flow: names a flow that exists, gives
the inputs it takes, saves outputs it has, and no flow calls itself round a circle."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..errors import Problem
from .spec import FlowSpec, SubflowCall
from .stack import MAX_DEPTH


def calls_of(spec: FlowSpec) -> Iterable[SubflowCall]:
    """Every call: and flow: of a flow: its steps' and its branches' (anywhere: included)."""
    for branch in spec.anywhere:
        if branch.call is not None:
            yield branch.call
    for state in spec.states.values():
        if state.call is not None:
            yield state.call
        for branch in state.on:
            if branch.call is not None:
                yield branch.call


def check_links(specs: dict[str, FlowSpec], names: Iterable[str]) -> list[Problem]:
    """`specs`: the flows that read without errors; `names`: every flow file's name, so that a
    call of a flow with problems of its own is not also reported as unknown."""
    known = set(names)
    problems: list[Problem] = []
    for spec in specs.values():
        for call in calls_of(spec):
            key = "flow" if call.jump else "call"

            def err(message: str, spec: FlowSpec = spec, call: SubflowCall = call) -> None:
                problems.append(Problem(spec.path, call.line, message))

            target = specs.get(call.flow)
            if target is None:
                if call.flow not in known:
                    close = difflib.get_close_matches(call.flow, sorted(known), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    err(f"{key}: no flow {call.flow!r} beside this one{hint}")
                continue
            given = {k for k, _v in call.args}
            inputs = ", ".join(target.inputs) or "none"
            for k in sorted(given - set(target.inputs)):
                err(f"with: {k!r} is not an input of flow {call.flow!r} (its inputs: {inputs})")
            for k in sorted(n for n, v in target.inputs.items() if v is None and n not in given):
                err(f"{key}: flow {call.flow!r} needs the input {k!r} (with: {{{k}: ...}})")
            outputs = ", ".join(target.outputs) or "none"
            for slot, output in call.save or ():
                if output not in target.outputs:
                    err(
                        f"save: {slot}: {output!r} is not an output of flow {call.flow!r}"
                        f" (its outputs: {outputs})"
                    )
            if not call.jump and not any(s.end for s in target.states.values()):
                err(f"call: flow {call.flow!r} has no end: step, so it never comes back")
    problems.extend(_cycles(specs))
    if not problems:
        problems.extend(_too_deep(specs))
    return problems


def _too_deep(specs: dict[str, FlowSpec]) -> list[Problem]:
    """Calls inside calls past MAX_DEPTH would fail at run time: refuse them here, at the top
    call of the chain (the call graph has no circles by now)."""
    longest: dict[str, list[tuple[str, int]]] = {}  # flow -> the longest chain of calls below

    def chain(name: str) -> list[tuple[str, int]]:
        if name not in longest:
            best: list[tuple[str, int]] = []
            for call in calls_of(specs[name]):
                if not call.jump and call.flow in specs:
                    below = [(call.flow, call.line), *chain(call.flow)]
                    if len(below) > len(best):
                        best = below
            longest[name] = best
        return longest[name]

    deep = {name for name in specs if len(chain(name)) > MAX_DEPTH}
    called = {c.flow for n in deep for c in calls_of(specs[n]) if not c.jump}
    problems = []
    for name in sorted(deep - called):
        path = chain(name)
        circle = " -> ".join([name, *(f for f, _l in path)])
        problems.append(
            Problem(
                specs[name].path,
                path[0][1],
                f"call: {len(path)} calls inside each other ({circle}); at most {MAX_DEPTH} can be",
            )
        )
    return problems


def _cycles(specs: dict[str, FlowSpec]) -> list[Problem]:
    """A flow that calls itself, directly or through others, would stack calls without end."""
    graph = {
        name: [c for c in calls_of(spec) if not c.jump and c.flow in specs]
        for name, spec in specs.items()
    }
    problems: list[Problem] = []
    reported: set[frozenset[str]] = set()
    for start in sorted(graph):
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            current, path = stack.pop()
            for call in graph[current]:
                if call.flow == start:
                    cycle = frozenset(path)
                    if cycle not in reported and start == min(path):
                        reported.add(cycle)
                        first = path[1] if len(path) > 1 else start
                        line = next(c.line for c in graph[start] if c.flow == first)
                        circle = " -> ".join([*path, start])
                        problems.append(
                            Problem(
                                specs[start].path,
                                line,
                                f"call: {circle} calls round a circle; use flow: to jump instead",
                            )
                        )
                elif call.flow not in path:
                    stack.append((call.flow, [*path, call.flow]))
    return problems
