"""Redis as the hot tier, against the real Redis (and a TCP proxy that cuts it): snapshots
served from Redis only when they belong to the current epoch, message ids marked seen only
after the store committed them, and nothing lost or answered differently when Redis goes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio as redis

from adapters.stores.redis_cache import RETRY_AFTER, RedisCachedStore
from engine.errors import StoreUnavailable
from engine.memstore import MemoryStore
from engine.metrics import Metrics
from engine.ports import Accept, Accepted, Commit, ConversationRow, JournalEntry, Op
from tests.fakes.clock import FakeClock
from tests.fakes.proxy import Proxy


class Counting(MemoryStore):
    """The in-memory store, counting what reaches it; it can be made to fail its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.writes = 0
        self.down = False

    async def conversation(self, key: str) -> ConversationRow | None:
        self.reads += 1
        return await super().conversation(key)

    async def write(self, ops: Sequence[Op]) -> list[Accepted | None]:
        if self.down:
            raise StoreUnavailable("down")
        self.writes += 1
        return await super().write(ops)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    c = redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    yield c
    await c.aclose()


async def cached(store: Counting, client: Any, prefix: str) -> RedisCachedStore:
    s = RedisCachedStore(store, client, dedupe_ttl=3600, prefix=prefix)
    await s.open()
    return s


def row(key: str, state: str) -> ConversationRow:
    return ConversationRow(key, "n", "support", state, False, 1.0, {"v": 2, "state": state})


def accept(*ids: str) -> Accept:
    return Accept(journal=[JournalEntry("n:1", i, {"id": i}, 100.0) for i in ids])


async def test_a_committed_snapshot_is_read_from_redis_not_the_store(client: Any) -> None:
    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    s = await cached(store, client, prefix)
    await s.write([Commit(row("n:1", "menu"))])
    assert (await s.conversation("n:1")) == row("n:1", "menu")
    assert store.reads == 0 and s.metrics.redis_reads.get("hit") == 1
    await s.write([Commit(row("n:1", "ask"))])
    assert (await s.conversation("n:1")).state == "ask"  # type: ignore[union-attr]
    assert store.reads == 0


async def test_entries_from_before_this_process_or_a_redis_error_are_not_trusted(
    client: Any,
) -> None:
    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    first = await cached(store, client, prefix)
    await first.write([Commit(row("n:1", "menu"))])
    # A crash may leave Redis behind the store: a new process reads the store.
    await store.write([Commit(row("n:1", "later"))])
    second = await cached(store, client, prefix)
    assert (await second.conversation("n:1")).state == "later"  # type: ignore[union-attr]
    assert store.reads == 1

    proxy = Proxy("127.0.0.1", 6379)
    await proxy.start()
    try:
        via = redis.from_url(
            f"redis://127.0.0.1:{proxy.port}/0", socket_connect_timeout=1, socket_timeout=1
        )
        clock, metrics = FakeClock(), Metrics()
        third = RedisCachedStore(
            store, via, dedupe_ttl=3600, prefix=prefix, metrics=metrics, clock=clock
        )
        await third.open()
        await third.write([Commit(row("n:2", "menu"))])
        proxy.cut()
        await store.write([Commit(row("n:2", "moved on"))])  # while Redis was away
        assert (await third.conversation("n:2")).state == "moved on"  # type: ignore[union-attr]
        assert metrics.redis_failures.total() == 1
        proxy.restore()
        await third.write([accept("wamid.soon"), Commit(row("n:3", "menu"))])
        assert await client.get(f"{prefix}:m:wamid.soon") is None  # left alone for a while
        await clock.advance(RETRY_AFTER)
        await third.write([accept("wamid.after"), Commit(row("n:3", "ask"))])
        assert await client.get(f"{prefix}:m:wamid.after") is not None  # Redis is used again
        reads = store.reads
        assert (await third.conversation("n:3")).state == "ask"  # type: ignore[union-attr]
        assert store.reads == reads and metrics.redis_reads.get("hit") == 1
        # Redis is back, and still holds "menu" for n:2: not trusted (an older epoch).
        assert (await third.conversation("n:2")).state == "moved on"  # type: ignore[union-attr]
        assert store.reads == reads + 1 and metrics.redis_reads.get("miss") == 2
        await via.aclose()
    finally:
        await proxy.close()


async def test_a_retried_webhook_is_acknowledged_without_the_store_once_it_is_durable(
    client: Any,
) -> None:
    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    s = await cached(store, client, prefix)
    store.down = True
    with pytest.raises(StoreUnavailable):
        await s.write([accept("wamid.1")])  # answered 503: must not be marked seen
    store.down = False
    (first,) = await s.write([accept("wamid.1")])
    assert first is not None and len(first.entries) == 1  # Meta's retry is handled
    writes = store.writes
    (again,) = await s.write([accept("wamid.1")])
    assert again == Accepted(duplicate_messages=1)
    assert store.writes == writes  # no store round trip
    (mixed,) = await s.write([accept("wamid.1", "wamid.2")])  # a miss decides nothing
    assert mixed is not None and [e.event_id for _s, e in mixed.entries] == ["wamid.2"]


async def test_flushing_or_losing_redis_changes_no_answer(client: Any) -> None:
    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    s = await cached(store, client, prefix)
    await s.write([Commit(row("n:1", "menu")), accept("wamid.9")])
    keys = [k async for k in client.scan_iter(f"{prefix}:*")]
    await client.delete(*keys)  # as FLUSHALL would, for this test's keys only
    assert (await s.conversation("n:1")).state == "menu"  # type: ignore[union-attr]
    (again,) = await s.write([accept("wamid.9")])
    assert again is not None and again.duplicate_messages == 1  # the store still knows it
    dead = redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    gone = await cached(store, dead, prefix)  # no Redis at all
    await gone.write([Commit(row("n:3", "menu")), accept("wamid.10")])
    assert (await gone.conversation("n:3")).state == "menu"  # type: ignore[union-attr]
    await dead.aclose()


async def test_a_stalled_redis_costs_one_timeout_then_is_left_alone(client: Any) -> None:
    import time

    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    proxy = Proxy("127.0.0.1", 6379)
    await proxy.start()
    via = redis.from_url(
        f"redis://127.0.0.1:{proxy.port}/0", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    try:
        s = await cached(store, via, prefix)
        await s.write([Commit(row("n:1", "menu"))])
        proxy.stall()
        started = time.monotonic()
        assert (await s.conversation("n:1")).state == "menu"  # type: ignore[union-attr]
        for i in range(20):  # then Redis is not waited for again, write after write
            await s.write([accept(f"wamid.s{i}"), Commit(row("n:1", f"s{i}"))])
            assert (await s.conversation("n:1")).state == f"s{i}"  # type: ignore[union-attr]
        assert time.monotonic() - started < 2.0  # one 0.5 s timeout, not 40
    finally:
        await via.aclose()
        await proxy.close()


async def test_a_redis_that_lost_its_token_is_not_trusted_whatever_it_still_holds(
    client: Any,
) -> None:
    """A Redis restored from an old dump (or restarted empty and written again by someone)
    lacks this epoch's token: a snapshot it holds is not used."""
    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    s = await cached(store, client, prefix)
    await s.write([Commit(row("n:1", "menu"))])
    await store.write([Commit(row("n:1", "newer"))])  # as if Redis had missed this write
    await client.delete(s._token_key())
    assert (await s.conversation("n:1")).state == "newer"  # type: ignore[union-attr]
    assert s.epoch.endswith(":1")  # a new epoch: nothing from before is used again


async def test_a_redis_rolled_back_to_an_older_dump_is_not_trusted(client: Any) -> None:
    """Redis restored from a dump taken after this epoch began (or a replica promoted while it
    lagged) still holds this epoch's token, but from an older write: its snapshot is stale, and
    is not used."""
    metrics = Metrics()
    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    s = RedisCachedStore(store, client, dedupe_ttl=3600, prefix=prefix, metrics=metrics)
    await s.open()
    await s.write([Commit(row("n:1", "menu"))])
    keys = [s._token_key(), s._snapshot_key("n:1")]
    dump = [await client.dump(k) for k in keys]  # Redis as it was then
    await s.write([Commit(row("n:1", "paid"))])
    assert (await s.conversation("n:1")).state == "paid"  # type: ignore[union-attr]
    assert store.reads == 0
    for k, value in zip(keys, dump, strict=True):
        await client.restore(k, 0, value, replace=True)
    assert (await s.conversation("n:1")).state == "paid"  # type: ignore[union-attr]
    assert store.reads == 1 and metrics.redis_failures.total() == 1


async def test_a_rollback_is_caught_even_when_a_write_comes_before_the_read(client: Any) -> None:
    """The connection stays open (a proxy in front of a Redis that failed over) and another
    contact's commit rewrites the token before the rolled-back snapshot is read: the write
    sees that the token it replaced is not the last one confirmed, and starts a new epoch."""
    metrics = Metrics()
    store, prefix = Counting(), f"t{uuid.uuid4().hex}"
    s = RedisCachedStore(store, client, dedupe_ttl=3600, prefix=prefix, metrics=metrics)
    await s.open()
    await s.write([Commit(row("n:1", "ask"))])
    keys = [s._token_key(), s._snapshot_key("n:1")]
    dump = [await client.dump(k) for k in keys]
    await s.write([Commit(row("n:1", "handoff"))])
    for k, value in zip(keys, dump, strict=True):
        await client.restore(k, 0, value, replace=True)
    await s.write([Commit(row("n:2", "menu")), accept("wamid.r1")])  # the next webhook's commit
    assert metrics.redis_failures.total() == 1
    assert (await s.conversation("n:1")).state == "handoff"  # type: ignore[union-attr]
    assert store.reads == 1
