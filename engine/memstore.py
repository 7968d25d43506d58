"""An in-memory Store: the same contract as the durable stores, nothing kept across runs.

Used by `python -m engine chat` and by tests. Everything written is round-tripped through JSON,
so it cannot hide a value the real stores could not hold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .errors import StoreRejected
from .ports import (
    JSON,
    Accept,
    Accepted,
    Alias,
    Commit,
    ConversationRow,
    Delivered,
    JournalEntry,
    MessageRow,
    Op,
    Pruned,
    Record,
    Sending,
    StatusWrite,
    TimerWrite,
)
from .records import STATUS_RANK


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _refuse_unstorable(op: Op) -> None:
    texts: list[Any] = []
    if isinstance(op, Commit):
        texts = [op.conversation.snapshot, *[(m.text, m.payload) for m in op.messages]]
    elif isinstance(op, Accept):
        texts = [[e.event for e in op.journal], [r.payload for r in op.raw]]
    try:
        json.dumps(texts, ensure_ascii=False).encode()
    except (TypeError, ValueError) as e:
        raise StoreRejected(f"{type(e).__name__}: {e}") from e


class MemoryStore:
    def __init__(self) -> None:
        self.commits = 0
        self._dedupe: dict[str, float] = {}
        self._journal: dict[int, tuple[str, str, JSON, float]] = {}
        self._seq = 0
        self._aliases: dict[tuple[str, str], str] = {}
        self._conversations: dict[str, ConversationRow] = {}
        self._messages: dict[str, MessageRow] = {}  # insertion order is transcript order
        self._statuses: dict[tuple[str, str], StatusWrite] = {}
        self._raw: list[tuple[str, Any, float]] = []
        self._timers: dict[tuple[str, str], TimerWrite] = {}
        self._records: dict[tuple[str, str], Record] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def write(self, ops: Sequence[Op]) -> list[Accepted | None]:
        for op in ops:  # refuse what a durable store could not hold, before changing anything
            _refuse_unstorable(op)
        results: list[Accepted | None] = []
        touched: set[str] = set()
        for op in ops:
            if isinstance(op, Accept):
                results.append(self._accept(op, touched))
                continue
            if isinstance(op, Commit):
                self._commit(op)
            elif isinstance(op, Delivered):
                self._delivered(op, touched)
            elif isinstance(op, Sending):
                m = self._messages.get(op.id)
                if m is not None and m.status == "pending":
                    self._messages[op.id] = replace(m, sending_at=op.at)
            results.append(None)
        for provider_id in touched:
            self._apply_status(provider_id)
        self.commits += 1
        return results

    def _accept(self, op: Accept, touched: set[str]) -> Accepted:
        entries: list[tuple[int, JournalEntry]] = []
        duplicates = 0
        for e in op.journal:
            if e.event_id in self._dedupe:
                duplicates += 1
                continue
            self._dedupe[e.event_id] = e.at
            self._seq += 1
            self._journal[self._seq] = (e.contact, e.event_id, _copy(e.event), e.at)
            entries.append((self._seq, e))
        new_statuses, dup_statuses = [], 0
        for s in op.statuses:
            if (s.provider_id, s.status) in self._statuses:
                dup_statuses += 1
                continue
            self._statuses[(s.provider_id, s.status)] = s
            new_statuses.append(s)
            touched.add(s.provider_id)
        self._raw.extend((r.kind, _copy(r.payload), r.at) for r in op.raw)
        for a in op.aliases:
            self._aliases[(a.number, a.alias)] = a.key
        return Accepted(entries, duplicates, new_statuses, dup_statuses)

    def _commit(self, op: Commit) -> None:
        c = op.conversation
        self._conversations[c.key] = replace(c, snapshot=_copy(c.snapshot))
        for m in op.messages:
            if m.id not in self._messages:
                self._messages[m.id] = m
        for t in op.timers:
            if t.due is None:
                self._timers.pop((t.contact, t.kind), None)
            else:
                self._timers[(t.contact, t.kind)] = t

    def _delivered(self, op: Delivered, touched: set[str]) -> None:
        m = self._messages.get(op.id)
        if m is None or STATUS_RANK.get(m.status, 0) >= STATUS_RANK[op.status]:
            return
        self._messages[op.id] = replace(
            m,
            status=op.status,
            provider_id=op.provider_id or m.provider_id,
            error_code=op.error_code,
            error_title=op.error_title,
            type=op.type or m.type,
            text=op.text if op.text is not None else m.text,
        )
        if op.provider_id:
            touched.add(op.provider_id)

    def _apply_status(self, provider_id: str) -> None:
        known = [s for (pid, _st), s in self._statuses.items() if pid == provider_id]
        if not known:
            return
        best = max(known, key=lambda s: s.rank)
        for key, m in self._messages.items():
            if (
                m.provider_id == provider_id
                and m.direction == "out"
                and STATUS_RANK.get(m.status, 0) < best.rank
            ):
                self._messages[key] = replace(
                    m,
                    status=best.status,
                    error_code=best.error_code or m.error_code,
                    error_title=best.error_title or m.error_title,
                )

    async def aliases(self) -> list[Alias]:
        return [Alias(n, a, k) for (n, a), k in self._aliases.items()]

    async def conversation(self, key: str) -> ConversationRow | None:
        row = self._conversations.get(key)
        return replace(row, snapshot=_copy(row.snapshot)) if row else None

    async def unhandled(self, after: int = 0, limit: int = 0) -> list[tuple[int, str, JSON]]:
        out = []
        for seq, (contact, _eid, event, _at) in sorted(self._journal.items()):
            row = self._conversations.get(contact)
            if seq > after and seq > (int(row.snapshot.get("last_seq") or 0) if row else 0):
                out.append((seq, contact, _copy(event)))
                if limit and len(out) >= limit:
                    break
        return out

    async def outbox(self, after: int = 0, limit: int = 0) -> list[MessageRow]:
        out = []
        for n, m in enumerate(self._messages.values(), start=1):
            if n > after and m.direction == "out" and m.status == "pending":
                out.append(replace(m, n=n))
                if limit and len(out) >= limit:
                    break
        return out

    async def transcript(self, key: str, limit: int) -> list[MessageRow]:
        return [m for m in self._messages.values() if m.contact == key][-limit:]

    async def conversations(
        self, *, state: str | None, handoff: bool | None, limit: int
    ) -> list[ConversationRow]:
        rows = [
            r
            for r in self._conversations.values()
            if (state is None or r.state == state) and (handoff is None or r.handoff == handoff)
        ]
        return sorted(rows, key=lambda r: r.updated_at, reverse=True)[:limit]

    async def contacts(self, alias: str, number: str | None) -> list[str]:
        return sorted(
            {
                k
                for (n, a), k in self._aliases.items()
                if a == alias and (number is None or n == number)
            }
        )

    async def timers(self, after: tuple[float, str, str] | None, limit: int) -> list[TimerWrite]:
        rows = sorted(self._timers.values(), key=lambda t: t.order)
        if after is not None:
            rows = [t for t in rows if t.order > after]
        return rows[:limit]

    async def record(self, kind: str, key: str) -> Record | None:
        found = self._records.get((kind, key))
        return replace(found, data=_copy(found.data)) if found is not None else None

    async def records(
        self, kind: str, *, contact: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Record]:
        rows = [
            r
            for r in self._records.values()
            if r.kind == kind
            and (contact is None or r.contact == contact)
            and (status is None or r.status == status)
        ]
        rows.sort(key=lambda r: (-r.at, r.key))
        return [replace(r, data=_copy(r.data)) for r in rows[:limit]]

    async def due_records(self, kind: str, before: float, limit: int) -> list[Record]:
        rows = [
            r
            for r in self._records.values()
            if r.kind == kind and r.due is not None and r.due <= before
        ]
        rows.sort(key=lambda r: (r.due or 0.0, r.key))
        return [replace(r, data=_copy(r.data)) for r in rows[:limit]]

    async def put_records(self, records: Sequence[Record]) -> bool:
        try:
            json.dumps([r.data for r in records], ensure_ascii=False).encode()
        except (TypeError, ValueError) as e:
            raise StoreRejected(f"{type(e).__name__}: {e}") from e
        for r in records:
            stored = self._records.get((r.kind, r.key))
            if (stored.version if stored is not None else 0) != r.version:
                return False
        for r in records:
            self._records[(r.kind, r.key)] = replace(r, data=_copy(r.data), version=r.version + 1)
        return True

    async def prune(self, *, dedupe_before: float, journal_before: float) -> Pruned:
        old_keys = [k for k, at in self._dedupe.items() if at < dedupe_before]
        for key in old_keys:
            del self._dedupe[key]
        handled = []
        for seq, (contact, _eid, _event, at) in self._journal.items():
            row = self._conversations.get(contact)
            if at < journal_before and row and seq <= int(row.snapshot.get("last_seq") or 0):
                handled.append(seq)
        for seq in handled:
            del self._journal[seq]
        old_statuses = [k for k, s in self._statuses.items() if s.at < dedupe_before]
        for pair in old_statuses:
            del self._statuses[pair]
        before = len(self._raw)
        self._raw = [r for r in self._raw if r[2] >= dedupe_before]
        return Pruned(len(old_keys), len(handled), len(old_statuses), before - len(self._raw))
