"""Redis as the hot tier in front of a store: never the system of record.

    write(ops)        -> the store commits, then (pipelined) each committed snapshot and each
                         new message id goes to Redis, tagged with this process's epoch
    conversation(key) -> Redis first: an entry of the current epoch is used as it is; anything
                         else (a miss, an older epoch, Redis down) asks the store
    write(retried)    -> a webhook whose message ids Redis already knows (committed before) is
                         acknowledged without a store round trip; a miss decides nothing

The epoch is the Redis server's run id, this process's start, and a counter bumped at every
Redis error: an entry written before Redis restarted, before this process started (a crash may
have left Redis behind the store) or before an error (a write that may not have landed) is never
trusted over the store. Each write also stores a token: the epoch and the number of that write.
A snapshot is used only if the token read with it is this epoch's and names the last write
Redis confirmed, or a later one, and each write checks that the token it replaces is the last
one confirmed: a Redis that came back from an older dump, or a replica that lagged behind when
it was promoted, holds an older token and is not trusted, even when the connection stayed open
and a write came first.

Losing or flushing Redis loses nothing and changes no answer: every read falls back to the
store, and every write goes to the store first.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis

from engine.clock import SystemClock
from engine.metrics import Metrics
from engine.ports import (
    JSON,
    Accept,
    Accepted,
    Alias,
    Clock,
    Commit,
    ConversationRow,
    MessageRow,
    Op,
    Pruned,
    Record,
    Store,
    TimerWrite,
)

log = logging.getLogger(__name__)

ERRORS = (redis.RedisError, OSError, TimeoutError)
SNAPSHOT_TTL = 86400  # seconds a snapshot stays in Redis after its last write
RETRY_AFTER = 5.0  # seconds after a Redis error before it is tried again


class RedisCachedStore:
    """A Store that keeps snapshots and seen message ids in Redis as well."""

    def __init__(
        self,
        store: Store,
        client: Any,
        *,
        dedupe_ttl: float,
        prefix: str = "wa-engine",
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.inner = store
        self.client = client
        self.dedupe_ttl = int(dedupe_ttl)
        self.prefix = prefix
        self.metrics = metrics or Metrics()
        self.clock = clock or SystemClock()
        self._start = uuid.uuid4().hex[:12]
        self._server = "?"
        self._generation = 0
        self._written = 0  # writes sent to Redis (each one's number goes into the token)
        self._confirmed = 0  # the last of them Redis confirmed
        self._failed_at = -RETRY_AFTER * 2
        self._retry_at = 0.0  # Redis is not tried again before this time
        self.commits = 0
        self._floor = 0.0  # ids of events before this time: the store has forgotten them

    @property
    def epoch(self) -> str:
        return f"{self._server}:{self._start}:{self._generation}"

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self.inner.open()
        await self._learn_server()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self.inner.ping()

    async def _learn_server(self) -> None:
        if self.clock.now() < self._retry_at:
            return  # Redis failed moments ago: do not make every write wait for it again
        try:
            info = await self.client.info("server")
            server = str(info.get("run_id", "?"))[:16]
            # A token of this epoch, read with every snapshot: a Redis that restarted empty
            # (or was flushed) has lost it, and its entries are not ours any more.
            self._written += 1
            epoch = f"{server}:{self._start}:{self._generation}"
            await self.client.set(self._token_key(), f"{epoch}|{self._written}")
            self._confirmed = self._written
            self._server = server
        except ERRORS as e:
            self._failed(e)

    def _failed(self, error: BaseException) -> None:
        """Redis failed: nothing it holds from before is trusted again (a new epoch)."""
        self._generation += 1
        self._server = "?"  # learnt again: a restart gives Redis a new run id
        self.metrics.redis_failures.inc()
        now = self.clock.now()
        if now - self._failed_at > 10:
            log.warning("Redis failed (%s); reading the store instead", error)
        self._failed_at = now
        self._retry_at = now + RETRY_AFTER

    def _trusted(self, token: bytes | str | None, confirmed: int) -> bool:
        """The token read with a snapshot is this epoch's, from write `confirmed` or later."""
        if isinstance(token, bytes):
            token = token.decode(errors="replace")
        epoch, _, number = (token or "").partition("|")
        return epoch == self.epoch and number.isdigit() and int(number) >= confirmed

    # --- writes ----------------------------------------------------------------------------

    async def write(self, ops: Sequence[Op]) -> list[Accepted | None]:
        known = await self._known_ids(ops)
        results: list[Accepted | None] = [None] * len(ops)
        rest: list[tuple[int, Op]] = []
        for i, op in enumerate(ops):
            if (
                isinstance(op, Accept)
                and op.journal
                and not (op.statuses or op.raw or op.aliases)
                and all(e.event_id in known for e in op.journal)
            ):
                results[i] = Accepted(duplicate_messages=len(op.journal))
                self.metrics.redis_acknowledged.inc()
            else:
                rest.append((i, op))
        if rest:
            written = await self.inner.write([op for _i, op in rest])
            self.commits += 1
            for (i, _op), result in zip(rest, written, strict=True):
                results[i] = result
            await self._remember([op for _i, op in rest])
        return results

    async def _known_ids(self, ops: Sequence[Op]) -> set[str]:
        """Message ids Redis says the store has committed. Any entry will do, whatever its
        epoch: it was written after the store's commit, and the store never forgets one within
        DEDUPE_TTL. A miss says nothing."""
        ids = [e.event_id for op in ops if isinstance(op, Accept) for e in op.journal]
        if not ids:
            return set()
        if self._server == "?":
            await self._learn_server()
            if self._server == "?":
                return set()  # Redis is away (or was moments ago): the store decides
        try:
            found = await self.client.mget([self._id_key(i) for i in ids])
        except ERRORS as e:
            self._failed(e)
            return set()
        return {
            i for i, v in zip(ids, found, strict=True) if v is not None and _at(v) >= self._floor
        }

    async def _remember(self, ops: Sequence[Op]) -> None:
        """After the store committed: the snapshots and the message ids, in one round trip."""
        if self._server == "?":
            return
        epoch = self.epoch
        expected = f"{epoch}|{self._confirmed}"
        self._written += 1
        number = self._written
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for op in ops:
                    if isinstance(op, Commit):
                        row = op.conversation
                        value = json.dumps(
                            {
                                "epoch": epoch,
                                "row": [
                                    row.key,
                                    row.number,
                                    row.flow,
                                    row.state,
                                    row.handoff,
                                    row.updated_at,
                                    row.snapshot,
                                ],
                            },
                            separators=(",", ":"),
                        )
                        pipe.set(self._snapshot_key(row.key), value, ex=SNAPSHOT_TTL)
                    elif isinstance(op, Accept):
                        for e in op.journal:  # the event's time: pruning's cut-off applies
                            pipe.set(self._id_key(e.event_id), repr(e.at), ex=self.dedupe_ttl)
                # Last, after what it vouches for; the token it replaces tells whether Redis still
                # holds every write confirmed so far (a rollback keeps the connection open).
                pipe.set(self._token_key(), f"{epoch}|{number}", get=True)
                replaced = (await pipe.execute())[-1]
        except ERRORS as e:
            self._failed(e)
            return
        if isinstance(replaced, bytes):
            replaced = replaced.decode(errors="replace")
        if replaced != expected:
            self._failed(RuntimeError("Redis lost or rolled back this engine's entries"))
            return
        self._confirmed = number

    # --- reads -----------------------------------------------------------------------------

    async def conversation(self, key: str) -> ConversationRow | None:
        if self._server != "?":
            confirmed = self._confirmed  # before the read: a write confirmed meanwhile is later
            try:
                token, raw = await self.client.mget([self._token_key(), self._snapshot_key(key)])
            except ERRORS as e:
                self._failed(e)
                token = raw = None
            if raw is not None and not self._trusted(token, confirmed):
                self._failed(RuntimeError("Redis lost or rolled back this engine's entries"))
                raw = None
            if raw is not None:
                try:
                    entry = json.loads(raw)
                    if entry.get("epoch") == self.epoch:
                        self.metrics.redis_reads.inc("hit")
                        k, number, flow, state, handoff, updated_at, snapshot = entry["row"]
                        return ConversationRow(
                            k, number, flow, state, bool(handoff), updated_at, snapshot
                        )
                except (ValueError, KeyError, TypeError):
                    pass  # not ours, or torn: the store knows
        self.metrics.redis_reads.inc("miss")
        return await self.inner.conversation(key)

    async def aliases(self) -> list[Alias]:
        return await self.inner.aliases()

    async def unhandled(self, after: int = 0, limit: int = 0) -> list[tuple[int, str, JSON]]:
        return await self.inner.unhandled(after, limit)

    async def outbox(self, after: int = 0, limit: int = 0) -> list[MessageRow]:
        return await self.inner.outbox(after, limit)

    async def transcript(self, key: str, limit: int) -> list[MessageRow]:
        return await self.inner.transcript(key, limit)

    async def conversations(
        self, *, state: str | None, handoff: bool | None, limit: int
    ) -> list[ConversationRow]:
        return await self.inner.conversations(state=state, handoff=handoff, limit=limit)

    async def contacts(self, alias: str, number: str | None) -> list[str]:
        return await self.inner.contacts(alias, number)

    async def timers(self, after: tuple[float, str, str] | None, limit: int) -> list[TimerWrite]:
        return await self.inner.timers(after, limit)

    # Records are not cached: an action reads what the store holds.

    async def record(self, kind: str, key: str) -> Record | None:
        return await self.inner.record(kind, key)

    async def records(
        self, kind: str, *, contact: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Record]:
        return await self.inner.records(kind, contact=contact, status=status, limit=limit)

    async def due_records(self, kind: str, before: float, limit: int) -> list[Record]:
        return await self.inner.due_records(kind, before, limit)

    async def put_records(self, records: Sequence[Record]) -> bool:
        return await self.inner.put_records(records)

    async def prune(self, *, dedupe_before: float, journal_before: float) -> Pruned:
        """The store forgets old message ids; Redis's copies of them stop counting too."""
        pruned = await self.inner.prune(dedupe_before=dedupe_before, journal_before=journal_before)
        self._floor = max(self._floor, dedupe_before)
        return pruned

    def _snapshot_key(self, key: str) -> str:
        return f"{self.prefix}:c:{key}"

    def _token_key(self) -> str:
        return f"{self.prefix}:epoch:{self._start}"

    def _id_key(self, event_id: str) -> str:
        return f"{self.prefix}:m:{event_id}"


def _at(value: bytes | str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return -1.0  # not ours: not trusted
