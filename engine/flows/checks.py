"""Checks of a whole flow, once every step has been read: every go: leads somewhere, every step
can be reached, then: never loops without waiting, and a choice names a button its step shows."""

from __future__ import annotations

from collections.abc import Iterable

from .reading import Reading
from .spec import Branch, FlowSpec, Route, Say, StateSpec, offered_says
from .text import PLACEHOLDER


def all_branches(states: dict[str, StateSpec], anywhere: tuple[Branch, ...]) -> Iterable[Branch]:
    yield from anywhere
    for s in states.values():
        yield from s.on


def edges(spec: FlowSpec, state: StateSpec) -> Iterable[tuple[str, int]]:
    groups: list[tuple[Route, ...]] = [
        state.then if state.after is not None else (),
        *(b.routes for b in state.on),
        *(rung.routes for rung in state.timeout),
        moves_on(state),
    ]
    if state.answers:
        groups.extend(b.routes for b in spec.anywhere)
    for routes in groups:
        for route in routes:
            yield route.to, route.line
    if state.answers:
        for r in state.otherwise or spec.otherwise:
            if r.go:
                yield r.go, r.go_line


def moves_on(state: StateSpec) -> tuple[Route, ...]:
    """Routes a step takes without the customer: then: (unless delayed) and an action's."""
    action = state.action
    then = state.then if state.after is None else ()
    return then + (action.done + action.error + action.unknown if action else ())


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
    """Steps that move on by themselves (then:) in a circle would never wait for the customer:
    any such circle is refused, whatever conditions its routes carry."""
    graph = {  # a call: step moves on once the flow it calls has ended, which waits
        name: [route.to for route in moves_on(st) if route.to in spec.states]
        for name, st in spec.states.items()
        if st.call is None
    }
    reported: set[frozenset[str]] = set()
    for start in graph:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            current, path = stack.pop()
            for nxt in graph.get(current, ()):
                if nxt == start:
                    cycle = frozenset(path)
                    if cycle not in reported and start == min(path):
                        reported.add(cycle)
                        first = path[1] if len(path) > 1 else start
                        line = next(
                            rt.line for rt in moves_on(spec.states[start]) if rt.to == first
                        )
                        loop = " -> ".join([*path, start])
                        r.err(line, f"loop {loop} never waits for the customer")
                elif nxt not in path:
                    stack.append((nxt, [*path, nxt]))


def choices(r: Reading, spec: FlowSpec) -> None:
    """A choice branch must name a button or row its state (or a re-prompt) actually sends."""
    for state in spec.states.values():
        offered = {i for say in offered_says(spec, state) for i, _t in say.choices()}
        offered |= {i for i, _meaning in state.understand or ()}  # intents a model may pick
        built = {say.rows.source for say in offered_says(spec, state) if say.rows}
        for b in state.on:
            if (
                b.when == "type"
                and b.values[0] == "choice"
                and b.values[1] not in built
                and b.values[1] not in r.broken  # a table that could not be read: said there
            ):
                shown = ", ".join(sorted(built)) or "none"
                r.err(
                    b.line,
                    f"type: choice from {b.values[1]!r}: state {state.name!r} shows no list rows"
                    f" from it (it shows rows from: {shown})",
                )
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


def understood(r: Reading, spec: FlowSpec) -> None:
    """Every intent an understand: step declares is taken by one of its choice: branches."""
    for state in spec.states.values():
        taken = {v for b in state.on if b.when == "choice" for v in b.values}
        for ident, _meaning in state.understand or ():
            if ident not in taken:
                r.err(
                    state.line,
                    f"understand: intent {ident!r} of state {state.name!r} is taken by no"
                    f" branch (add - choice: {ident})",
                )
        if state.understand is not None and not taken:
            r.err(state.line, f"understand: state {state.name!r} has no choice: branches")


def catches_all(branch: Branch) -> bool:
    """A branch that every message (or every text) meets: nothing after it is ever tried."""
    if branch.guard is not None:
        return False
    if branch.when == "kind":
        return bool({"any", "text"} & set(branch.values))
    if branch.when == "regex":
        return branch.pattern is not None and branch.pattern.search("") is not None
    if branch.when == "type":
        bounds = branch.bounds
        return branch.values[0] == "text" and (bounds is None or bounds == type(bounds)())
    return False


def hidden_anywhere(r: Reading, spec: FlowSpec) -> None:
    """A step's catch-all branch hides the flow's anywhere: branches (tried after the step's
    own): "agent" is taken as the answer instead of reaching a person."""
    if not spec.anywhere:
        return
    first = spec.anywhere[0]
    for state in spec.states.values():
        for branch in state.on:
            if catches_all(branch):
                r.warn(
                    branch.line,
                    f"this branch of {state.name!r} takes every message, so the anywhere:"
                    f" branches (line {first.line}) never run in this step; give it a when:,"
                    " or repeat the ones it needs before it",
                )
                break


def _set_by(branch: Branch) -> frozenset[str]:
    names = {slot for slot, _v in branch.sets}
    if branch.save:
        names.add(branch.save)
    if branch.pattern is not None:
        names.update(branch.pattern.groupindex)
    return frozenset(names)


def _moves(spec: FlowSpec, state: StateSpec) -> Iterable[tuple[str, frozenset[str]]]:
    """(target, slots set on the way) for every way out of `state`."""
    for route in state.then:
        yield route.to, state.call.gives if state.call is not None else frozenset()
    branches = (*state.on, *(spec.anywhere if state.answers else ()))
    for b in branches:
        for route in b.routes:
            yield route.to, _set_by(b)
    for rung in state.timeout:
        for route in rung.routes:
            yield route.to, frozenset(slot for slot, _v in rung.sets)
    call = state.action
    if call is not None:
        saved = {call.save} if isinstance(call.save, str) else {s for s, _f in call.save or ()}
        if call.llm == "extract" and call.save is None:
            saved = {name for name, _kind in call.fields}
        for route in call.unknown:
            yield route.to, frozenset({"error", *saved})
        for route in call.done:
            yield route.to, frozenset(saved)
        for route in call.error:
            yield route.to, frozenset({"error"})
    ladder = state.otherwise or spec.otherwise
    if state.answers and ladder and ladder[-1].go:
        yield ladder[-1].go, frozenset()


def unset_slots(r: Reading, spec: FlowSpec) -> None:
    """A message that shows {slot} (no |default) in a step that some path reaches without
    setting it: the customer would read "your order number is ." Computed as the slots set on
    every path from the start (a must-analysis), so a slot set on one branch only is found."""
    everything = frozenset(r.slots)
    entry: dict[str, frozenset[str]] = dict.fromkeys(spec.states, everything)
    if spec.start not in spec.states:
        return
    entry[spec.start] = frozenset(spec.slots) | frozenset(spec.inputs)
    changed = True
    while changed:  # the sets only shrink, so this ends
        changed = False
        for name, state in spec.states.items():
            leaving = entry[name] | {slot for slot, _v in state.sets}
            for target, added in _moves(spec, state):
                if target not in entry:
                    continue
                narrowed = entry[target] & (leaving | added)
                if narrowed != entry[target]:
                    entry[target] = narrowed
                    changed = True
    for name, state in spec.states.items():
        known = entry[name] | {slot for slot, _v in state.sets}
        for say in state.says:
            for slot in _shown(say):
                if slot not in known and slot in r.slots:
                    r.warn(
                        say.line,
                        f"{{{slot}}} may be empty here: a path to {name!r} does not set it;"
                        f" write {{{slot}|...}} with a default, or set it on every path",
                    )


def _shown(say: Say) -> list[str]:
    """Slots a message shows without a default ({slot}, not {slot|default})."""
    texts = [say.body, say.header or "", say.footer or "", say.list_button or ""]
    texts += [title for _id, title in say.buttons]
    for title, rows in say.sections:
        texts.append(title or "")
        texts += [t for _id, t, desc in rows for t in (t, desc or "")]
    return [
        m["name"]
        for text in texts
        for m in PLACEHOLDER.finditer(text)
        if m["name"] and m["default"] is None
    ]
