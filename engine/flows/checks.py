"""Checks of a whole flow, once every step has been read: every go: leads somewhere, every step
can be reached, then: never loops without waiting, and a choice names a button its step shows."""

from __future__ import annotations

from collections.abc import Iterable

from .reading import Reading
from .spec import Branch, FlowSpec, StateSpec, offered_says


def all_branches(states: dict[str, StateSpec], anywhere: tuple[Branch, ...]) -> Iterable[Branch]:
    yield from anywhere
    for s in states.values():
        yield from s.on


def edges(spec: FlowSpec, state: StateSpec) -> Iterable[tuple[str, int]]:
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


def targets(r: Reading, spec: FlowSpec) -> None:
    seen: set[tuple[str, int]] = set()
    for state in spec.states.values():
        for target, line in edges(spec, state):
            if target not in spec.states and (target, line) not in seen:
                seen.add((target, line))
                r.err(line, f"go to unknown state {target!r}{r.hint(target, spec.states)}")


def reachability(r: Reading, spec: FlowSpec) -> None:
    seen = {spec.start}
    todo = [spec.start]
    while todo:
        state = spec.states[todo.pop()]
        for target, _line in edges(spec, state):
            if target in spec.states and target not in seen:
                seen.add(target)
                todo.append(target)
    for name, state in spec.states.items():
        if name not in seen:
            r.err(state.line, f"state {name!r} is unreachable from start {spec.start!r}")


def then_cycles(r: Reading, spec: FlowSpec) -> None:
    """States linked only by then: would loop forever without waiting for the customer."""
    for name, state in spec.states.items():
        path = [name]
        current = state
        while current.then and current.then in spec.states:
            if current.then in path:
                if current.then == name and name == min(path):
                    r.err(
                        state.then_line,
                        f"then: loop {' -> '.join([*path, name])} never waits for the customer",
                    )
                break
            path.append(current.then)
            current = spec.states[current.then]


def choices(r: Reading, spec: FlowSpec) -> None:
    """A choice branch must name a button or row its state (or a re-prompt) actually sends."""
    for state in spec.states.values():
        offered = {i for say in offered_says(spec, state) for i, _t in say.choices()}
        for b in state.on:
            if b.when != "choice":
                continue
            for value in b.values:
                if value not in offered:
                    known = ", ".join(sorted(offered)) or "none"
                    r.err(
                        b.line,
                        f"choice {value!r} is not a button or row of state"
                        f" {state.name!r} (it offers: {known})",
                    )
