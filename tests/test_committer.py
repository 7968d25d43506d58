"""Group commit: many concurrent writes share few transactions; a bad write costs only itself."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from adapters.stores.sqlite import SqliteStore
from engine.committer import Committer
from engine.errors import StoreRejected, StoreUnavailable
from engine.memstore import MemoryStore
from engine.metrics import Metrics
from engine.ports import Accept, Commit, ConversationRow, JournalEntry, MessageRow


def entry(i: int) -> JournalEntry:
    return JournalEntry(f"n:{i % 7}", f"wamid.{i}", {"i": i}, 1.0)


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    """500 concurrent single-event writes take far fewer than 500 transactions, in order."""
    store = SqliteStore(tmp_path / "g.sqlite3")
    await store.open()
    metrics = Metrics()
    committer = Committer(store, metrics)
    committer.start()
    order: list[int] = []
    results = await asyncio.gather(
        *(
            committer.submit(Accept(journal=[entry(i)]), then=lambda r, i=i: order.append(i))
            for i in range(500)
        )
    )
    await committer.close()
    assert all(r is not None and len(r.entries) == 1 for r in results)
    assert store.commits < 50, store.commits
    assert metrics.commits.total() == store.commits and metrics.commit_ops.total() == 500
    assert order == list(range(500))  # follow-ups run in commit order
    seqs = [r.entries[0][0] for r in results if r is not None]
    assert seqs == sorted(seqs)  # journal order is submission order
    await store.close()


async def test_a_rejected_write_costs_only_itself(tmp_path: Path) -> None:
    """When a batch fails, its writes are retried alone: the good ones land, the bad one is
    refused as such."""
    store = SqliteStore(tmp_path / "p.sqlite3")
    await store.open()
    committer = Committer(store, Metrics())
    committer.start()
    poison: Any = MessageRow("x", "n:1", "out", "n", "text", None, "pending", 1.0)  # type: ignore[arg-type]
    bad = Commit(ConversationRow("n:1", "n", "f", "s", False, 1.0, {"v": 1}), [poison])
    outcomes = await asyncio.gather(
        committer.submit(Accept(journal=[entry(1)])),
        committer.submit(bad),
        committer.submit(Accept(journal=[entry(2)])),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], StoreRejected)  # what it holds is refused: no retry helps
    assert [len(o.entries) for o in (outcomes[0], outcomes[2])] == [1, 1]  # type: ignore[union-attr]
    await committer.close()
    with pytest.raises(StoreUnavailable):
        await committer.submit(Accept())
    await store.close()


async def test_writes_waiting_for_a_slow_store_count_toward_the_backlog(tmp_path: Path) -> None:
    """A store that takes its time (Postgres stalling): the writes queued behind it are memory
    like any other backlog, so intake says 503 once they pass MAX_BACKLOG."""
    from engine.engine import Engine, EngineConfig
    from engine.events import Customer, Message, Text
    from engine.flows import load_flows
    from engine.memstore import MemoryStore
    from tests.support import ROOT, Recorder

    gate = asyncio.Event()

    async def until(done: Any) -> None:  # let the loop run the tasks, no time passing
        for _ in range(1000):
            if done():
                return
            await asyncio.sleep(0)
        raise AssertionError("never happened")

    holding = False

    class Slow(MemoryStore):
        async def write(self, ops: Any) -> Any:
            nonlocal holding
            holding = True
            await gate.wait()
            return await super().write(ops)

    engine = Engine(
        store=Slow(),
        sender=Recorder(),
        flows=load_flows(ROOT / "flows", "support"),
        config=EngineConfig(max_backlog=3),
    )
    await engine.start()
    try:

        def message(i: int) -> Message:
            return Message(f"w{i}", 1, Customer("n", phone=f"1555{i:07d}"), Text("hi"))

        first = asyncio.create_task(engine.ingest([message(0)]))  # the batch the store holds
        await until(lambda: holding)
        waiting = [asyncio.create_task(engine.ingest([message(i)])) for i in range(1, 6)]
        await until(lambda: engine.committer.waiting == 5)
        assert engine.backlog >= 5 and engine.overloaded
        gate.set()
        await asyncio.gather(first, *waiting)
        assert engine.committer.waiting == 0
    finally:
        gate.set()
        await engine.close()


class Counting(MemoryStore):
    """The in-memory store, with a fault to raise on chosen write calls."""

    def __init__(self, fault: BaseException | None = None) -> None:
        super().__init__()
        self.fault = fault
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, ops: Any) -> Any:
        self.calls += 1
        await self.gate.wait()
        if self.fault is not None:
            fault, self.fault = self.fault, None
            raise fault
        return await super().write(ops)


async def _queued(committer: Committer, n: int) -> list[asyncio.Task[Any]]:
    """n writes queued before the committer's first batch, so they share it."""
    tasks = [asyncio.create_task(committer.submit(Accept(journal=[entry(i)]))) for i in range(n)]
    await asyncio.sleep(0)
    return tasks


async def test_an_outage_fails_the_batch_at_once_without_splitting_it() -> None:
    """A store that is down (or full) fails a batch of 20 in one call, not 21, and the writes
    queued behind it with it: each gets StoreUnavailable chained to what the store raised, and
    the next write is written."""
    full = OSError("database or disk is full")
    store = Counting(full)
    store.gate.clear()
    committer = Committer(store, Metrics())
    committer.start()
    carried = await _queued(committer, 20)
    await asyncio.sleep(0)  # the first batch is in the store's hands; five more queue behind
    behind = [asyncio.create_task(committer.submit(Accept(journal=[entry(i)]))) for i in range(5)]
    await asyncio.sleep(0)
    store.gate.set()
    outcomes = await asyncio.gather(*carried, *behind, return_exceptions=True)
    assert store.calls == 1  # the queued ones did not wait out a second failure
    assert all(isinstance(o, StoreUnavailable) and o.__cause__ is full for o in outcomes)
    assert committer.failure is not None and "disk is full" in committer.failure.error
    assert await committer.submit(Accept(journal=[entry(99)])) is not None
    assert committer.failure is None
    await committer.close()


async def test_a_committer_that_dies_fails_every_waiting_write_and_starts_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Something the commit loop does not expect (a BaseException from the store, here) kills
    its task: the writes it was carrying and the ones queued behind get 503 at once, never hang,
    and the next write is committed by a new task."""

    class Bug(BaseException):
        pass

    store = Counting(Bug("boom"))
    store.gate.clear()
    metrics = Metrics()
    committer = Committer(store, metrics)
    committer.start()
    carried = await _queued(committer, 3)
    await asyncio.sleep(0)  # the first batch is in the store's hands
    queued = [asyncio.create_task(committer.submit(Accept(journal=[entry(9)])))]
    await asyncio.sleep(0)
    assert committer.waiting == 1
    store.gate.set()
    outcomes = await asyncio.wait_for(
        asyncio.gather(*carried, *queued, return_exceptions=True), timeout=5
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    assert all(isinstance(o.__cause__, Bug) for o in outcomes if isinstance(o, BaseException))
    assert metrics.committer_restarts.total() == 1
    assert "the committer stopped (4 writes failed with 503)" in caplog.text
    result = await asyncio.wait_for(committer.submit(Accept(journal=[entry(10)])), timeout=5)
    assert result is not None and len(result.entries) == 1
    await committer.close()


async def test_a_store_that_can_write_again_opens_intake_within_a_probe_without_traffic() -> None:
    """After an outage the engine probes the store every second on its clock: the first probe
    that passes clears the failure, so webhooks are taken again long before the failure's
    10 s memory would have run out."""
    from engine.engine import STORE_PROBE_EVERY, Engine
    from engine.flows import load_flows
    from tests.fakes.clock import FakeClock
    from tests.support import ROOT, Recorder

    class Flaky(MemoryStore):
        down = False

        async def ping(self) -> None:
            if self.down:
                raise StoreUnavailable("Postgres: ConnectionRefusedError")

        async def write(self, ops: Any) -> Any:
            if self.down:
                raise StoreUnavailable("Postgres: ConnectionRefusedError")
            return await super().write(ops)

    clock, store = FakeClock(), Flaky()
    engine = Engine(
        store=store, sender=Recorder(), flows=load_flows(ROOT / "flows", "support"), clock=clock
    )
    await engine.start()
    try:
        store.down = True
        with pytest.raises(StoreUnavailable):
            await engine.committer.submit(Accept(journal=[entry(1)]))
        await clock.advance(STORE_PROBE_EVERY)
        assert engine.committer.failure is not None  # still down: still failed
        store.down = False
        await clock.advance(STORE_PROBE_EVERY)
        assert engine.committer.failure is None
    finally:
        await engine.close()
