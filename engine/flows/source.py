"""YAML for flow designers: line numbers kept, yes/no kept as words, duplicate keys caught.

PyYAML's safe loader follows YAML 1.1, where `yes`, `no`, `on` and `off` are booleans; a flow
with `{yes: ..., no: ...}` would silently lose keys. Here only `true`/`false` are booleans, every
other scalar stays the text the designer wrote (numbers included: `100` stays "100"), and each
mapping and list remembers the line of every key and item so problems point at `file:line`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class YMap(dict[str, Any]):
    """A mapping that knows its own line and the line of each key (1-based)."""

    line: int
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class YList(list[Any]):
    line: int
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class SourceError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Resolver(yaml.SafeLoader):
    pass


# Drop YAML 1.1's yes/no/on/off booleans; keep only true/false.
_Resolver.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# A number in a data file: plain decimal notation, no leading zeros ("00123" stays text, as
# does "+1555", "1e5" or YAML 1.1's "1:30"), so that codes and phone numbers keep their form.
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")


def decode(data: bytes) -> str:
    """UTF-8 text (a byte-order mark dropped); SourceError at the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SourceError(
            line, f"not UTF-8 text: byte 0x{data[e.start]:02x} (save the file as UTF-8)"
        ) from None


def load(text: str, *, numbers: bool = False) -> tuple[Any, list[SourceError]]:
    """Parse YAML text into YMap/YList/str/bool/None; duplicate keys are reported, not fatal.
    With `numbers` (data files), an unquoted scalar written as a decimal number is a Decimal."""
    try:
        node = yaml.compose(text, Loader=_Resolver)
    except RecursionError:
        raise SourceError(1, f"YAML nested more than {MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None) or ""
        if "quoted scalar" in context and getattr(e, "context_mark", None) is not None:
            # The scanner notices an unclosed quote where the text ends: point at the quote.
            mark = e.context_mark  # type: ignore[attr-defined]
            problem = "a quote opened here is never closed"
        line = mark.line + 1 if mark is not None else 1
        raise SourceError(line, f"YAML syntax error: {problem}") from e
    problems: list[SourceError] = []
    if node is None:
        return None, problems
    _measure(node)
    return _convert(node, problems, numbers), problems


MAX_DEPTH = 64  # levels of nesting in one file
MAX_VALUES = 1_000_000  # values one file may expand to, aliases expanded ("billion laughs")


def _measure(root: Node) -> None:
    """Refuse a document nested too deeply, or whose aliases (&a, *a) expand it past
    MAX_VALUES: a few hundred bytes of nested aliases would otherwise need gigabytes."""
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in sizes and not done:
            continue
        if depth > MAX_DEPTH:
            raise SourceError(node.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        if not done:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
        if sizes[id(node)] > MAX_VALUES:
            raise SourceError(
                node.start_mark.line + 1,
                f"this expands to more than {MAX_VALUES:,} values (YAML aliases: &name, *name)",
            )


def _convert(node: Node, problems: list[SourceError], numbers: bool = False) -> Any:
    if isinstance(node, ScalarNode):
        if node.tag == "tag:yaml.org,2002:bool":
            return node.value.lower() == "true"
        if node.tag == "tag:yaml.org,2002:null":
            return None
        if numbers and node.style is None and NUMBER.fullmatch(node.value):
            return Decimal(node.value)
        return node.value
    if isinstance(node, SequenceNode):
        out = YList(_convert(item, problems, numbers) for item in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [item.start_mark.line + 1 for item in node.value]
        return out
    if isinstance(node, MappingNode):
        mapping = YMap()
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                problems.append(SourceError(line, "a key must be plain text"))
                continue
            key = key_node.value
            if key in mapping:
                first = mapping.key_lines[key]
                problems.append(SourceError(line, f"duplicate key {key!r} (first at line {first})"))
                continue
            mapping[key] = _convert(value_node, problems, numbers)
            mapping.key_lines[key] = line
        return mapping
    raise SourceError(node.start_mark.line + 1, f"unsupported YAML node {node.tag}")
