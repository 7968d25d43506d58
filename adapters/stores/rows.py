"""The rows the SQL stores share: the transcript's columns, and rows read back as records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine.ports import ConversationRow, MessageRow, Record
from engine.records import STATUS_RANK

MESSAGE_COLUMNS = (
    "id, contact, direction, number, type, text, status, at, provider_id, payload,"
    " error_code, error_title"
)


def message_values(m: MessageRow) -> tuple[Any, ...]:
    """A message as the insert's values: MESSAGE_COLUMNS with the status's rank after status."""
    return (
        m.id,
        m.contact,
        m.direction,
        m.number,
        m.type,
        m.text,
        m.status,
        STATUS_RANK.get(m.status, 0),
        m.at,
        m.provider_id,
        m.payload,
        m.error_code,
        m.error_title,
    )


def message(r: Iterable[Any], n: int = 0, sending_at: float | None = None) -> MessageRow:
    """A row of MESSAGE_COLUMNS; `n`: its place in the store's order (outbox pages)."""
    id_, contact, direction, number, type_, text, status, at, provider_id, payload, code, title = r
    return MessageRow(
        id=id_,
        contact=contact,
        direction=direction,
        number=number,
        type=type_,
        text=text,
        status=status,
        at=at,
        provider_id=provider_id,
        payload=payload,
        error_code=code,
        error_title=title,
        n=n,
        sending_at=sending_at,
    )


def conversation(r: Iterable[Any]) -> ConversationRow:
    """A row of CONVERSATION_COLUMNS."""
    key, number, flow, state, handoff, updated_at, snapshot = r
    return ConversationRow(
        key, number, flow, state, bool(handoff), updated_at, json.loads(snapshot)
    )


RECORD_COLUMNS = "kind, key, contact, status, due, at, version, data"


def record(row: Iterable[Any]) -> Record:
    """A row of RECORD_COLUMNS as a Record."""
    kind, key, contact, status, due, at, version, data = row
    return Record(kind, key, json.loads(data), contact, status, due, at, version)


def record_data(r: Record) -> str:
    return json.dumps(r.data, ensure_ascii=False, separators=(",", ":"))
