"""Slot values: text, numbers (Decimal, never float), yes/no, lists and records, and None.

A slot holds what the flow put in it: the text a customer wrote, a number computed in Decimal,
a list (a cart), a record (a location with its coordinates, an item of a cart). Snapshots are
JSON, so numbers are written tagged (`{"$n": "12.50"}`) and read back as Decimal; a snapshot
from before typed slots holds only text, which reads back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

Value = str | Decimal | bool | int | None | list[Any] | dict[str, Any]

_NUMBER = "$n"


def to_json(value: Value) -> Any:
    """A JSON-ready form of `value` that `from_json` turns back into an equal value."""
    if isinstance(value, Decimal):
        return {_NUMBER: str(value)}
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return str(value)


def from_json(data: Any) -> Value:
    if isinstance(data, dict):
        if len(data) == 1 and _NUMBER in data:
            return Decimal(str(data[_NUMBER]))
        return {str(k): from_json(v) for k, v in data.items()}
    if isinstance(data, list):
        return [from_json(v) for v in data]
    if isinstance(data, float):  # never written, but a hand-edited snapshot may hold one
        return Decimal(str(data))
    if data is None or isinstance(data, str | bool | int):
        return data
    return str(data)


def to_plain(data: Any) -> Any:
    """A snapshot's slot (tagged JSON) as plain JSON for an API: numbers as decimal strings."""
    value = from_json(data)
    return _plain(value)


def _plain(value: Value) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_text(value: Value) -> str:
    """How a value reads inside a message."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list | tuple):
        return ", ".join(to_text(v) for v in value)
    if isinstance(value, Mapping):
        if "name" in value or "address" in value:  # a place: its name reads best
            named = value.get("name") or value.get("address")
            if named:
                return to_text(named)
        if "latitude" in value and "longitude" in value:
            return f"{to_text(value['latitude'])}, {to_text(value['longitude'])}"
        return ", ".join(f"{k}: {to_text(v)}" for k, v in value.items())
    return str(value)
