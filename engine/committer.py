"""Group commit: every write in the engine goes through one task that batches them.

Whatever is waiting when the store finishes a transaction becomes the next transaction, so N
concurrent webhooks and actor steps cost far fewer than N commits, with no timer and no added
latency when the engine is idle. Each write may carry a follow-up (`then`) that runs right after
its commit, in commit order, inside this task: that is how accepted events reach their actors in
journal order even when the HTTP request that brought them has gone away.

If the store refuses a batch (StoreRejected: what one write holds cannot be stored), its writes
are retried one by one, so that write costs only itself. Any other failure is the store's state
(down, stalled, full): every write of the batch, and every write queued behind it, gets
StoreUnavailable at once, chained to what the store said, rather than N more transactions that
would each fail the same way (or wait out the same timeout).

The task itself must not die with writes waiting on it: if it does (a bug), every pending write
fails at once with StoreUnavailable (callers retry or answer 503) and the task is started again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .backoff import STORE
from .clock import SystemClock
from .errors import EngineError, StoreRejected, StoreUnavailable
from .metrics import Metrics
from .ports import Accepted, Clock, Op, Store

log = logging.getLogger(__name__)

Then = Callable[[Any], None]
T = TypeVar("T")


async def retrying(attempt: Callable[[], Awaitable[T]], clock: Clock) -> T:
    """Run a store call until it works, backing off while the store is unavailable. Callers wait
    rather than skip ahead, so what they record stays in order; StoreRejected is not retried.
    The committer reports the store's state once; each waiting caller only says it at DEBUG."""
    failures = 0
    while True:
        try:
            return await attempt()
        except StoreUnavailable as e:
            failures += 1
            delay = STORE.delay(failures)
            log.debug("store unavailable (%s); retrying in %.2fs", e, delay)
            await clock.sleep(delay)


@dataclass(slots=True)
class Failure:
    """The store cannot write: what it said last, since when, and when it last failed."""

    error: str
    since: float
    last: float
    unavailable: bool = False  # the store said it is unreachable or timed out (not full, say)


Item = tuple[Op, "asyncio.Future[Any]", Then | None]


class Committer:
    def __init__(
        self, store: Store, metrics: Metrics, *, clock: Clock | None = None, max_ops: int = 1000
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock or SystemClock()
        self._max_ops = max_ops
        self._pending: list[Item] = []
        self._urgent = 0  # urgent writes at the head of _pending
        self._inflight: list[Item] = []  # the batch the store is writing now
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Set while the store cannot write (since the first failure), cleared by a commit.
        self.failure: Failure | None = None
        self.on_failure: Callable[[], None] = lambda: None  # an outage begins (the engine's watch)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="committer")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The task returned (closing) or died: no write may be left waiting for it."""
        died = None if task.cancelled() else task.exception()
        if died is None and not self._pending and not self._inflight:
            return
        cause = died or asyncio.CancelledError("the committer task was cancelled")
        stranded = self._inflight + self._pending
        self._inflight, self._pending, self._urgent = [], [], 0
        for _op, future, _then in stranded:
            if not future.done():
                error = StoreUnavailable(f"the committer stopped: {type(cause).__name__}")
                error.__cause__ = cause
                future.set_exception(error)
        if died is None:  # closed, or cancelled with the loop: nothing to start again
            return
        self._metrics.committer_restarts.inc()
        log.error(
            "the committer stopped (%d writes failed with 503); starting it again",
            len(stranded),
            exc_info=died,
        )
        self.start()

    @property
    def waiting(self) -> int:
        """Writes queued for the next batch (they count toward MAX_BACKLOG)."""
        return len(self._pending)

    async def submit(
        self, op: Op, then: Then | None = None, *, urgent: bool = False
    ) -> Accepted | None:
        """Record `op`; return once it is durable. Raises StoreUnavailable if it could not be.
        An `urgent` write (what the provider answered to a send) goes into the next batch
        ahead of those waiting, so it never waits behind a thousand others."""
        if self._closing or self._task is None:
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if urgent:
            self._pending.insert(self._urgent, (op, future, then))
            self._urgent += 1
        else:
            self._pending.append((op, future, then))
        self._wake.set()
        result: Accepted | None = await future
        return result

    async def close(self) -> None:
        """Commit what is queued, then stop taking writes."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[: self._max_ops]
                del self._pending[: self._max_ops]
                self._urgent = max(0, self._urgent - len(batch))
                self._inflight = batch
                await self._commit(batch)
                self._inflight = []
            if self._closing:
                return

    async def _commit(self, batch: list[Item]) -> Exception | None:
        """Write `batch` in one transaction; if the store refuses it, write by write. Return the
        error of a single write that failed, None when everything landed."""
        started = time.perf_counter()
        try:
            results = await self._store.write([op for op, _f, _t in batch])
        except Exception as e:
            if len(batch) == 1 or not isinstance(e, StoreRejected):
                # The store itself is failing: write by write would only wait out its timeout
                # (or hit the same full disk) once per write.
                errors = [self._fail(item, e) for item in batch]
                if not isinstance(e, StoreRejected):
                    # So would the writes queued behind this batch: fail them now, so that a
                    # webhook never waits for more than one of the store's timeouts.
                    waiting, self._pending, self._urgent = self._pending, [], 0
                    for item in waiting:
                        self._fail(item, e)
                return errors[0]
            log.debug(
                "a batch of %d writes was refused (%s); writing them one by one", len(batch), e
            )
            for i, item in enumerate(batch):
                error = await self._commit([item])
                if error is not None and not isinstance(error, StoreRejected):
                    # The store itself is failing: the rest would fail the same way.
                    for rest in batch[i + 1 :]:
                        self._fail(rest, error)
                    break
            return None
        self.recovered()
        self._metrics.commits.inc()
        self._metrics.commit_ops.inc(by=len(batch))
        self._metrics.commit_time.observe(time.perf_counter() - started)
        for (_op, future, then), result in zip(batch, results, strict=True):
            if then is not None:
                try:
                    then(result)
                except Exception:
                    log.exception("follow-up of a committed write failed")
            if not future.done():
                future.set_result(result)
        return None

    def _fail(self, item: Item, e: Exception) -> Exception:
        said = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
        error: Exception = e
        if not isinstance(e, StoreRejected | StoreUnavailable):
            error = StoreUnavailable(said)
            error.__cause__ = e
        if isinstance(error, StoreRejected):
            log.error("the store refuses a write: %s", error)
        else:
            self.report(e)
        future = item[1]
        if not future.done():
            future.set_exception(error)
        return error

    def report(self, e: Exception) -> None:
        """The store could not write (a write of ours, or readiness's probe with no traffic):
        said once per outage, and counted."""
        said = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
        now = self._clock.now()
        if self.failure is not None:
            self.failure.error, self.failure.last = said, now
            self.failure.unavailable = isinstance(e, StoreUnavailable)
        else:
            self.failure = Failure(said, now, now, isinstance(e, StoreUnavailable))
            self.on_failure()
            self._metrics.store_failures.inc()
            log.error(
                "the store cannot write (%s); webhooks answer 503 and every write waits until "
                "it can",
                said,
            )

    def recovered(self) -> None:
        """The store took a write again (a commit, or readiness's own write)."""
        if self.failure is not None:
            log.warning(
                "the store writes again, after %.0fs (%s)",
                self._clock.now() - self.failure.since,
                self.failure.error,
            )
            self.failure = None
