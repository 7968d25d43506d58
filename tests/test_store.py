"""The Store contract, run over every implementation (memory, SQLite, Postgres)."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

from adapters.stores.postgres import PostgresStore
from adapters.stores.redis_cache import RedisCachedStore
from adapters.stores.sqlite import SqliteStore
from engine.errors import ConfigError, StoreRejected, StoreUnavailable
from engine.memstore import MemoryStore
from engine.ports import (
    Accept,
    Accepted,
    Alias,
    Commit,
    ConversationRow,
    Delivered,
    JournalEntry,
    MessageRow,
    RawWrite,
    Sending,
    StatusWrite,
    Store,
    TimerWrite,
)
from engine.records import STATUS_RANK
from tests.conftest import TEST_DATABASE_URL, require_redis
from tests.conftest import postgres_schema as fresh_schema


@pytest.fixture(params=["memory", "sqlite", "postgres", "postgres+redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgres":
        async with postgres_schema() as s:
            yield s
        return
    if request.param == "postgres+redis":
        async with postgres_schema() as pg, redis_client() as client:
            cached = RedisCachedStore(pg, client, dedupe_ttl=3600, prefix=f"t{uuid.uuid4().hex}")
            await cached._learn_server()
            yield cached
        return
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.sqlite3")
    await s.open()
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def redis_client() -> AsyncIterator[Any]:
    client = redis.from_url(await require_redis(), socket_connect_timeout=3, socket_timeout=3)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[PostgresStore]:
    """A Postgres store in a schema of its own, dropped afterwards."""
    async with fresh_schema() as schema:
        s = PostgresStore(TEST_DATABASE_URL, schema=schema)
        await s.open()
        try:
            yield s
        finally:
            await s.close()


def entry(event_id: str, contact: str = "n:1", at: float = 100.0) -> JournalEntry:
    return JournalEntry(contact, event_id, {"id": event_id, "body": "hi"}, at)


def status(provider_id: str, state: str, at: float = 100.0, code: int | None = None) -> StatusWrite:
    return StatusWrite(
        provider_id, state, STATUS_RANK.get(state, 0), at, code, "boom" if code else None
    )


def convo(
    key: str, last_seq: int, *, state: str = "menu", handoff: bool = False, at: float = 100.0
) -> ConversationRow:
    return ConversationRow(
        key, "n", "support", state, handoff, at, {"v": 1, "last_seq": last_seq, "slots": {"a": "b"}}
    )


def out(id_: str, contact: str = "n:1", at: float = 100.0) -> MessageRow:
    return MessageRow(
        id_,
        contact,
        "out",
        "n",
        "text",
        f"text of {id_}",
        "pending",
        at,
        payload=json.dumps({"message": {"type": "text", "body": id_}}),
    )


def inbound(id_: str, contact: str = "n:1", at: float = 100.0) -> MessageRow:
    return MessageRow(id_, contact, "in", "n", "text", "hello", "received", at, provider_id=id_)


async def accept(store: Store, *ops: Accept) -> list[Accepted]:
    results = await store.write(list(ops))
    return [r for r in results if isinstance(r, Accepted)]


async def test_messages_are_deduplicated_by_provider_id(store: Store) -> None:
    """A re-delivered or re-batched message id is dropped, across writes and within one."""
    (first,) = await accept(store, Accept(journal=[entry("w1"), entry("w2")]))
    assert [e.event_id for _s, e in first.entries] == ["w1", "w2"]
    assert first.entries[0][0] < first.entries[1][0]
    a, b = await accept(
        store,
        Accept(journal=[entry("w2"), entry("w3")]),
        Accept(journal=[entry("w3"), entry("w1")]),
    )
    assert [e.event_id for _s, e in a.entries] == ["w3"] and a.duplicate_messages == 1
    assert b.entries == [] and b.duplicate_messages == 2


async def test_unhandled_is_what_no_snapshot_covers_in_journal_order(store: Store) -> None:
    (r,) = await accept(
        store, Accept(journal=[entry("w1", "n:1"), entry("w2", "n:2"), entry("w3", "n:1")])
    )
    seqs = [s for s, _e in r.entries]
    assert [(s, c) for s, c, _ev in await store.unhandled()] == list(
        zip(seqs, ["n:1", "n:2", "n:1"], strict=True)
    )
    await store.write([Commit(convo("n:1", seqs[0]))])
    assert [s for s, _c, _ev in await store.unhandled()] == seqs[1:]
    (_, _, event) = (await store.unhandled())[0]
    assert event == {"id": "w2", "body": "hi"}


async def test_commit_keeps_snapshot_transcript_and_outbox_together(store: Store) -> None:
    await store.write([Commit(convo("n:1", 1), [inbound("w1"), out("r:w1:0"), out("r:w1:1")])])
    row = await store.conversation("n:1")
    assert row is not None and row.snapshot["slots"] == {"a": "b"} and row.state == "menu"
    assert [m.id for m in await store.outbox()] == ["r:w1:0", "r:w1:1"]
    transcript = await store.transcript("n:1", 10)
    assert [(m.direction, m.id) for m in transcript] == [
        ("in", "w1"),
        ("out", "r:w1:0"),
        ("out", "r:w1:1"),
    ]
    # Replaying the same step changes nothing: outbound ids are deterministic.
    await store.write([Commit(convo("n:1", 1), [inbound("w1"), out("r:w1:0"), out("r:w1:1")])])
    assert len(await store.transcript("n:1", 10)) == 3


async def test_a_delivered_message_leaves_the_outbox_with_its_provider_id(store: Store) -> None:
    await store.write([Commit(convo("n:1", 1), [out("a"), out("b")])])
    await store.write([Delivered("a", "accepted", 101.0, provider_id="wamid.A")])
    await store.write(
        [Delivered("b", "failed", 101.0, error_code=131047, error_title="window closed")]
    )
    assert await store.outbox() == []
    a, b = await store.transcript("n:1", 10)
    assert (a.status, a.provider_id) == ("accepted", "wamid.A")
    assert (b.status, b.error_code, b.error_title) == ("failed", 131047, "window closed")


async def test_a_send_in_flight_is_recorded_on_its_outbox_row(store: Store) -> None:
    """Sending marks a pending row (a restart reads it back with the outbox); it changes nothing
    once the row is settled. Delivered may say what went instead (a template)."""
    await store.write([Commit(convo("n:1", 1), [out("a"), out("b")])])
    await store.write([Sending("a", 150.5)])
    assert [(m.id, m.sending_at) for m in await store.outbox()] == [("a", 150.5), ("b", None)]
    await store.write(
        [
            Delivered("a", "accepted", 151.0, provider_id="wamid.A", type="template", text="Hi"),
            Sending("a", 152.0),
        ]
    )
    assert [m.id for m in await store.outbox()] == ["b"]
    a, _b = await store.transcript("n:1", 10)
    assert (a.status, a.type, a.text) == ("accepted", "template", "Hi")


async def test_statuses_never_move_backwards(store: Store) -> None:
    """read may come without delivered; a late delivered or sent does not undo it."""
    await store.write(
        [Commit(convo("n:1", 1), [out("a")]), Delivered("a", "accepted", 1.0, provider_id="P")]
    )
    (r,) = await accept(store, Accept(statuses=[status("P", "sent"), status("P", "read")]))
    assert len(r.new_statuses) == 2
    await accept(store, Accept(statuses=[status("P", "delivered")]))
    (dup,) = await accept(store, Accept(statuses=[status("P", "read")]))
    assert dup.duplicate_statuses == 1 and dup.new_statuses == []
    (m,) = await store.transcript("n:1", 1)
    assert m.status == "read"


async def test_failed_is_terminal_and_keeps_its_error(store: Store) -> None:
    await store.write(
        [Commit(convo("n:1", 1), [out("a")]), Delivered("a", "accepted", 1.0, provider_id="P")]
    )
    await accept(store, Accept(statuses=[status("P", "failed", code=131026)]))
    await accept(store, Accept(statuses=[status("P", "read")]))
    (m,) = await store.transcript("n:1", 1)
    assert (m.status, m.error_code) == ("failed", 131026)


async def test_a_status_that_arrives_before_the_send_is_recorded_is_applied_later(
    store: Store,
) -> None:
    """Meta can report 'delivered' before we have written down the id it gave us."""
    await store.write([Commit(convo("n:1", 1), [out("a")])])
    await accept(store, Accept(statuses=[status("EARLY", "delivered")]))
    (m,) = await store.transcript("n:1", 1)
    assert m.status == "pending"
    await store.write([Delivered("a", "accepted", 2.0, provider_id="EARLY")])
    (m,) = await store.transcript("n:1", 1)
    assert (m.status, m.provider_id) == ("delivered", "EARLY")


async def test_inbound_messages_ignore_statuses(store: Store) -> None:
    await store.write([Commit(convo("n:1", 1), [inbound("w1")])])
    await accept(store, Accept(statuses=[status("w1", "read")]))
    (m,) = await store.transcript("n:1", 1)
    assert m.status == "received"


async def test_aliases_and_contact_lookup(store: Store) -> None:
    await accept(
        store,
        Accept(
            aliases=[
                Alias("n1", "155", "n1:US.1"),
                Alias("n1", "US.1", "n1:US.1"),
                Alias("n2", "155", "n2:155"),
            ]
        ),
    )
    assert set(await store.aliases()) == {
        Alias("n1", "155", "n1:US.1"),
        Alias("n1", "US.1", "n1:US.1"),
        Alias("n2", "155", "n2:155"),
    }
    assert await store.contacts("155", None) == ["n1:US.1", "n2:155"]
    assert await store.contacts("155", "n2") == ["n2:155"]
    await accept(store, Accept(aliases=[Alias("n2", "155", "n2:US.9")]))  # relinked
    assert await store.contacts("155", "n2") == ["n2:US.9"]


async def test_listing_filters_by_state_and_handoff_newest_first(store: Store) -> None:
    await store.write(
        [
            Commit(convo("n:1", 0, state="menu", at=1.0)),
            Commit(convo("n:2", 0, state="handoff", handoff=True, at=3.0)),
            Commit(convo("n:3", 0, state="menu", at=2.0)),
        ]
    )
    assert [r.key for r in await store.conversations(state=None, handoff=None, limit=10)] == [
        "n:2",
        "n:3",
        "n:1",
    ]
    assert [r.key for r in await store.conversations(state="menu", handoff=None, limit=10)] == [
        "n:3",
        "n:1",
    ]
    assert [r.key for r in await store.conversations(state=None, handoff=True, limit=10)] == ["n:2"]
    assert len(await store.conversations(state=None, handoff=None, limit=1)) == 1


async def test_transcript_limit_keeps_the_latest_in_order(store: Store) -> None:
    await store.write([Commit(convo("n:1", 0), [out(f"m{i}", at=float(i)) for i in range(5)])])
    assert [m.id for m in await store.transcript("n:1", 2)] == ["m3", "m4"]


async def test_prune_forgets_old_keys_and_handled_journal_only(store: Store) -> None:
    (r,) = await accept(
        store,
        Accept(
            journal=[
                entry("old-handled", at=10.0),
                entry("old-unhandled", "n:2", at=10.0),
                entry("new", at=500.0),
            ],
            statuses=[status("P", "read", at=10.0)],
            raw=[RawWrite("errors", [{"code": 1}], 10.0)],
        ),
    )
    await store.write([Commit(convo("n:1", r.entries[0][0]))])
    pruned = await store.prune(dedupe_before=100.0, journal_before=100.0)
    assert (pruned.dedupe, pruned.journal, pruned.statuses, pruned.raw) == (2, 1, 1, 1)
    assert [e["id"] for _s, _c, e in await store.unhandled()] == ["old-unhandled", "new"]
    # A forgotten key is accepted again: dedupe holds for the configured window only.
    (again,) = await accept(store, Accept(journal=[entry("old-handled", at=600.0), entry("new")]))
    assert [e.event_id for _s, e in again.entries] == ["old-handled"]


async def test_prune_goes_on_past_one_chunk(store: Store) -> None:
    """More old rows than one DELETE takes (5,000 in the SQL stores): all of them go, the new
    ones stay."""
    n = 10_001
    (r,) = await accept(
        store,
        Accept(
            journal=[entry(f"old{i}", at=10.0) for i in range(n)] + [entry("new", at=500.0)],
            statuses=[status(f"P{i}", "read", at=10.0) for i in range(n)],
        ),
    )
    await store.write([Commit(convo("n:1", r.entries[-2][0]))])
    pruned = await store.prune(dedupe_before=100.0, journal_before=100.0)
    assert (pruned.dedupe, pruned.journal, pruned.statuses) == (n, n, n)
    assert [e["id"] for _s, _c, e in await store.unhandled()] == ["new"]


async def test_sqlite_write_is_all_or_nothing(tmp_path: Path) -> None:
    """A batch that fails part-way leaves nothing of itself behind."""
    store = SqliteStore(tmp_path / "a.sqlite3")
    await store.open()
    broken: Any = MessageRow("x", "n:1", "out", "n", "text", None, "pending", 1.0)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="NOT NULL"):
        await store.write([Accept(journal=[entry("w1")]), Commit(convo("n:1", 1), [broken])])
    assert await store.unhandled() == [] and await store.conversation("n:1") is None
    (ok,) = await accept(store, Accept(journal=[entry("w1")]))
    assert len(ok.entries) == 1
    await store.close()


async def test_sqlite_survives_reopen_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.write([Accept(journal=[entry("w1")]), Commit(convo("n:1", 0), [out("r:1")])])
    await store.close()
    again = SqliteStore(path)
    await again.open()
    assert [m.id for m in await again.outbox()] == ["r:1"]
    assert len(await again.unhandled()) == 1
    rows = await again.reader.execute_fetchall("SELECT version FROM schema_version")
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    await again.close()


async def test_timers_are_read_in_pages_by_due_time_and_the_last_write_wins(store: Store) -> None:
    armed = [TimerWrite(f"n:{i}", "flow", 100.0 + i, 1, 0) for i in range(5)]
    await store.write([Commit(convo("n:0", 0), [], armed)])
    first = await store.timers(None, 2)
    assert [t.contact for t in first] == ["n:0", "n:1"]
    rest = await store.timers(first[-1].order, 10)
    assert [t.contact for t in rest] == ["n:2", "n:3", "n:4"]
    # One batch that arms and then clears a timer (two steps of one contact) leaves it cleared.
    await store.write(
        [
            Commit(convo("n:9", 0), [], [TimerWrite("n:9", "flow", 50.0, 2, 0)]),
            Commit(convo("n:9", 0), [], [TimerWrite("n:9", "flow", None)]),
        ]
    )
    assert "n:9" not in [t.contact for t in await store.timers(None, 10)]


async def test_postgres_write_is_all_or_nothing_and_survives_reopen() -> None:
    async with postgres_schema() as store:
        broken: Any = MessageRow("x", "n:1", "out", "n", "text", None, "pending", 1.0)  # type: ignore[arg-type]
        with pytest.raises(StoreRejected):
            await store.write([Accept(journal=[entry("w1")]), Commit(convo("n:1", 1), [broken])])
        assert await store.unhandled() == [] and await store.conversation("n:1") is None
        await store.write([Accept(journal=[entry("w1")]), Commit(convo("n:1", 0), [out("r:1")])])
        # Text that Postgres cannot hold (NUL, which JSON allows) is kept, not refused.
        (r,) = await accept(
            store, Accept(journal=[entry("w\x002")], statuses=[status("p\x00", "sent")])
        )
        assert len(r.entries) == 1
        await store.close()
        again = PostgresStore(store.dsn, schema=store.schema)
        await again.open()
        try:
            assert [m.id for m in await again.outbox()] == ["r:1"]
            assert len(await again.unhandled()) == 2
            versions = await again.pool.fetch("SELECT version FROM schema_version")
            assert [v[0] for v in versions] == [1, 2, 3]
        finally:
            await again.close()


async def test_postgres_one_engine_per_schema_and_no_older_engine_on_a_newer_schema() -> None:
    async with postgres_schema() as store:
        second = PostgresStore(store.dsn, schema=store.schema)
        with pytest.raises(ConfigError, match="in use by another engine"):
            await second.open()
        await store.pool.execute("INSERT INTO schema_version VALUES (99)")
        await store.close()
        newer = PostgresStore(store.dsn, schema=store.schema)
        with pytest.raises(ConfigError, match="schema version 99, newer than this engine's 3"):
            await newer.open()


async def test_the_outbox_and_the_journal_are_read_in_pages(store: Store) -> None:
    (r,) = await accept(store, Accept(journal=[entry(f"w{i}", f"n:{i}") for i in range(7)]))
    await store.write([Commit(convo("n:0", r.entries[0][0]), [out(f"r{i}") for i in range(7)])])
    pages, after = [], 0
    while page := await store.outbox(after, 3):
        pages.append([m.id for m in page])
        after = page[-1].n
    assert pages == [["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
    seen, after = [], 0
    while entries := await store.unhandled(after, 4):
        seen.append([e["id"] for _s, _c, e in entries])
        after = entries[-1][0]
    assert seen == [["w1", "w2", "w3", "w4"], ["w5", "w6"]]  # w0 is covered by its snapshot


async def test_postgres_takes_its_lock_again_after_losing_its_session() -> None:
    """A Postgres restart ends the session that holds the advisory lock: the store takes it
    again before its next write, and refuses to write if another engine took it meanwhile."""
    async with postgres_schema() as store:
        assert store._held is not None
        admin = await asyncpg.connect(store.dsn)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", store._held.get_server_pid())
            store._checked = 0.0  # (checked once a second)
            await store.write([Accept(journal=[entry("after-restart")])])  # the lock, again
            assert len(await store.unhandled()) == 1
            second = PostgresStore(store.dsn, schema=store.schema)
            with pytest.raises(ConfigError, match="in use by another engine"):
                await second.open()  # the lock is held again
            await admin.execute("SELECT pg_terminate_backend($1)", store._held.get_server_pid())
            thief = PostgresStore(store.dsn, schema=store.schema)
            await thief.open()  # another engine got there first
            store._checked = 0.0
            try:
                with pytest.raises(StoreUnavailable, match="in use by another engine"):
                    await store.write([Accept(journal=[entry("refused")])])
            finally:
                await thief.close()
        finally:
            await admin.close()
