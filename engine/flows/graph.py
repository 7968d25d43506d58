"""A flow as a picture: `python -m engine flows graph FLOW [--format mermaid|dot|svg]`.

Every transition is labelled with what takes it: the button or words, the condition, the
silence or the delay, an action's outcome, the re-prompt ladder running out. Steps that hand
off, end or call code are drawn in their own shapes; `anywhere:` branches come from one node of
their own, since every waiting step has them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import Branch, FlowSpec, Route, StateSpec

ANYWHERE = "anywhere"


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    label: str
    dashed: bool = False


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:.0f}{unit}"
    return f"{value:.0f}s"


def _condition(b: Branch) -> str:
    values = ", ".join(b.values)
    if b.when == "choice":
        text = f"tap {values}"
    elif b.when == "text":
        text = f'"{values}"'
    elif b.when == "keywords":
        text = f"says {values}"
    elif b.when == "regex":
        text = f"/{b.pattern.pattern if b.pattern is not None else ''}/"
    elif b.when == "kind":
        text = f"sends {values}"
    elif b.when == "faq":
        text = "FAQ match"
    elif b.when == "type" and b.values[0] == "choice":
        text = f"picks from {b.values[1]}"
    elif b.when == "type":
        bounds = b.bounds
        low = bounds.low if bounds is not None else None
        high = bounds.high if bounds is not None else None
        rng = f" {low if low is not None else ''}..{high if high is not None else ''}"
        text = values + (rng if low is not None or high is not None else "")
    else:
        text = ""
    if b.guard is not None:
        text = f"{text} if {b.guard.source}".strip()
    return text


def _routed(source: str, routes: tuple[Route, ...], label: str, dashed: bool = False) -> list[Edge]:
    out = []
    for r in routes:
        joint = " and " if " if " in label else " if "  # the branch has a guard of its own
        extra = f"{joint}{r.guard.source}" if r.guard is not None else ""
        if r.guard is None and len(routes) > 1:
            extra = " otherwise"
        out.append(Edge(source, r.to, (label + extra).strip(), dashed))
    return out


def edges(spec: FlowSpec) -> list[Edge]:
    out: list[Edge] = []
    for name, state in spec.states.items():
        out.extend(_state_edges(spec, name, state))
    for b in spec.anywhere:
        out.extend(_routed(ANYWHERE, b.routes, _condition(b), dashed=True))
        if b.call is not None:  # a digression: the other flow, then back where the customer was
            out.append(Edge(ANYWHERE, ANYWHERE, f"{_condition(b)}: call {b.call.flow}", True))
    return out


def _state_edges(spec: FlowSpec, name: str, state: StateSpec) -> list[Edge]:
    out: list[Edge] = []
    if state.then:
        out.extend(
            _routed(name, state.then, f"after {_seconds(state.after)}" if state.after else "")
        )
    for b in state.on:
        out.extend(_routed(name, b.routes, _condition(b)))
        if b.call is not None:
            out.append(Edge(name, name, f"{_condition(b)}: call {b.call.flow}", True))
    for rung in state.timeout:
        silent = f"silent {_seconds(rung.after)}"
        # A reminder that keeps waiting is a loop on the step itself.
        out.extend(_routed(name, rung.routes, silent) or [Edge(name, name, f"{silent}: reminder")])
    if state.action is not None:
        out.extend(_routed(name, state.action.done, "done"))
        out.extend(_routed(name, state.action.error, "error"))
        out.extend(_routed(name, state.action.unknown, "not in the documents"))
    ladder = state.otherwise or (spec.otherwise if state.answers else ())
    if ladder and ladder[-1].go is not None and state.answers:
        out.append(Edge(name, ladder[-1].go, f"not understood x{len(ladder)}"))
    return out


def _shape(state: StateSpec) -> str:
    if state.handoff:
        return "handoff"
    if state.end:
        return "end"
    if state.action is not None:
        return "action"
    if state.call is not None:
        return "jump" if state.call.jump else "call"
    return "step"


def _label(name: str, state: StateSpec, newline: str, parens: str = "") -> str:
    if state.action is not None and state.action.llm is not None:
        return f"{name}:{newline}{state.action.llm} (a model){parens}"
    if state.action is not None:
        return f"{name}:{newline}{state.action.name}{parens}"
    if state.call is not None:
        verb = "continue in" if state.call.jump else "call"
        return f"{name}:{newline}{verb} flow {state.call.flow}"
    return name


def _id(name: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in name)


def _quote(text: str) -> str:
    return text.replace('"', "'")


def mermaid(spec: FlowSpec) -> str:
    lines = ["flowchart TD", f'  start(("start")) --> {_id(spec.start)}']
    for name, state in spec.states.items():
        label = _quote(_label(name, state, " "))
        shape = _shape(state)
        if shape == "handoff":
            lines.append(f'  {_id(name)}[["{label} (person)"]]')
        elif shape == "end":
            lines.append(f'  {_id(name)}(["{label}"])')
        elif shape == "action":
            lines.append(f'  {_id(name)}{{{{"{label}"}}}}')
        elif shape == "call":
            lines.append(f'  {_id(name)}[/"{label}"/]')
        elif shape == "jump":
            lines.append(f'  {_id(name)}[\\"{label}"\\]')
        else:
            lines.append(f'  {_id(name)}["{label}"]')
    if spec.anywhere:
        lines.append(f'  {_id(ANYWHERE)}>"anywhere"]')
    for e in edges(spec):
        arrow = "-.->" if e.dashed else "-->"
        label = f'|"{_quote(e.label)}"|' if e.label else ""
        lines.append(f"  {_id(e.source)} {arrow}{label} {_id(e.target)}")
    return "\n".join(lines) + "\n"


def dot(spec: FlowSpec) -> str:
    shapes = {
        "handoff": 'shape=box, style="rounded,filled", fillcolor="#fde2c8"',
        "end": "shape=doublecircle",
        "action": 'shape=hexagon, style=filled, fillcolor="#dbeafe"',
        "call": 'shape=component, style=filled, fillcolor="#dcfce7"',
        "jump": 'shape=cds, style=filled, fillcolor="#dcfce7"',
        "step": "shape=box, style=rounded",
    }
    lines = [
        f'digraph "{_quote(spec.name)}" {{',
        "  rankdir=TB;",
        '  node [fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=10];',
        '  start [shape=circle, label="start"];',
        f"  start -> {_id(spec.start)};",
    ]
    for name, state in spec.states.items():
        label = _label(name, state, "\\n", "()")
        lines.append(f'  {_id(name)} [label="{_quote(label)}", {shapes[_shape(state)]}];')
    if spec.anywhere:
        lines.append(f'  {_id(ANYWHERE)} [label="anywhere", shape=note];')
    for e in edges(spec):
        style = ", style=dashed" if e.dashed else ""
        lines.append(f'  {_id(e.source)} -> {_id(e.target)} [label="{_quote(e.label)}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
