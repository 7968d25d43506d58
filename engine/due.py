"""Due records: documents an action pack keeps (engine.ports.Record) whose `due` time has come,
handed to the pack's handler of their kind (engine.actions.WhenDue): an unpaid invoice's
reminder. The runner looks on the engine's clock at the soonest due time it knows, and at least
every `poll` seconds (records written by another process, or by the admin API), so the timer
is the record itself: it survives a restart, and a handler that wrote nothing is called again.

A store that cannot be read is a state of the store, not of the records: the runner logs it
once, waits for the next look, and says when it can read again. A handler that fails on one
record is logged (once until it succeeds) and does not stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence

from .actions import DueContext, WhenDue
from .ports import Clock, Record, Records, Timer

log = logging.getLogger(__name__)

PAGE = 100  # due records read at a time
Notify = Callable[[str, str, str, str | None, Mapping[str, str]], Awaitable[None]]


class DueRunner:
    def __init__(
        self,
        records: Records,
        clock: Clock,
        handlers: Callable[[], Mapping[str, WhenDue]],
        notify: Notify,
        *,
        poll: float = 60.0,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._records = records
        self._clock = clock
        self._handlers = handlers  # read at each look: a reload brings new ones
        self._notify = notify
        self._poll = poll
        self._busy = busy
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._timer: Timer | None = None
        self._looking = False  # a look is due or under way (what `idle` waits for)
        self._next = math.inf  # when the next look is
        self._noted = math.inf  # the soonest due time written during a look
        self._failing: set[tuple[str, str]] = set()  # records whose handler failed last time
        self._unreadable = False

    def start(self) -> None:
        self._looking = True
        self._task = asyncio.create_task(self._run(), name="due-records")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def noted(self, records: Sequence[Record]) -> None:
        """Records were written (through `watched`): one due before the next look brings the
        look forward to its time."""
        due = min((r.due for r in records if r.due is not None), default=math.inf)
        if self._looking:  # the look under way may have read past it: its wait counts it
            self._noted = min(self._noted, due)
            return
        if due >= self._next or self._task is None:
            return  # the next look finds it
        if self._timer is not None:
            self._timer.cancel()
        self._next = due
        self._timer = self._clock.call_later(max(due - self._clock.now(), 0.0), self._woken)

    def watched(self, records: Records) -> Records:
        """`records`, telling this runner of what is written through them (actions' writes)."""
        return _Watched(records, self)

    @property
    def idle(self) -> bool:
        """No look is due or under way (tests settle on it)."""
        return not self._looking

    async def _run(self) -> None:
        while True:
            self._noted = math.inf
            soonest = min(await self.look() or math.inf, self._noted)
            wait = min(self._poll, soonest - self._clock.now())
            self._wake.clear()
            self._looking = False
            self._next = self._clock.now() + max(wait, 0.0)
            self._timer = self._clock.call_later(max(wait, 0.0), self._woken)
            await self._wake.wait()

    def _woken(self) -> None:
        self._looking = True
        self._wake.set()

    async def look(self) -> float | None:
        """Hand every record that is due to its handler; the soonest due time still ahead."""
        if self._busy():
            return None  # the engine's backlog is full: the next look
        soonest = math.inf
        try:
            for kind, handler in list(self._handlers().items()):
                soonest = min(soonest, await self._kind(kind, handler))
        except Exception as e:
            if not self._unreadable:
                log.error("due records cannot be read (%s); looking again in %.0fs", e, self._poll)
            self._unreadable = True
            return None
        if self._unreadable:
            log.info("due records can be read again")
            self._unreadable = False
        return None if soonest == math.inf else soonest

    async def _kind(self, kind: str, handler: WhenDue) -> float:
        now = self._clock.now()
        seen: set[str] = set()
        while True:  # a record whose handler failed is still due: read past those seen
            limit = len(seen) + PAGE
            found = await self._records.due_records(kind, now, limit)
            page = [r for r in found if r.key not in seen]
            for record in page:
                seen.add(record.key)
                await self._handle(handler, record, now)
            if not page or len(found) < limit:
                break
        ahead = await self._records.due_records(kind, now + self._poll, PAGE)
        return min((r.due for r in ahead if r.due is not None and r.due > now), default=math.inf)

    async def _handle(self, handler: WhenDue, record: Record, now: float) -> None:
        ctx = DueContext(now=now, records=self._records, notify=self._notify)
        ident = (record.kind, record.key)
        try:
            await handler.fn(ctx, record)
        except Exception:
            level = logging.DEBUG if ident in self._failing else logging.ERROR
            log.log(level, "due %s %s: its handler failed", *ident, exc_info=True)
            self._failing.add(ident)
            return
        self._failing.discard(ident)


class _Watched:
    """Records whose writes the runner hears of (engine.due.DueRunner.watched)."""

    def __init__(self, inner: Records, runner: DueRunner) -> None:
        self._inner = inner
        self._runner = runner

    async def record(self, kind: str, key: str) -> Record | None:
        return await self._inner.record(kind, key)

    async def records(
        self, kind: str, *, contact: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Record]:
        return await self._inner.records(kind, contact=contact, status=status, limit=limit)

    async def due_records(self, kind: str, before: float, limit: int) -> list[Record]:
        return await self._inner.due_records(kind, before, limit)

    async def put_records(self, records: Sequence[Record]) -> bool:
        written = await self._inner.put_records(records)
        if written:
            self._runner.noted(records)
        return written
