"""Timers: rows in the store, one scheduler that fires them into the contacts' mailboxes.

A timer (a step's timeout or delay, the hand-off expiry) is written in the same transaction as
the snapshot that set it, so it exists exactly when the step that armed it does. The scheduler
keeps only a window of the soonest timers in memory, read from the store in pages by due time,
and one loop handle on the earliest of them:

    memory holds every stored timer whose (due, contact, kind) <= horizon

`note()` keeps that true as commits set and clear timers; when the window runs dry the next
page is read after the horizon. With 100,000 pending timers, memory holds one page.

Firing routes an event to the contact's actor and forgets the timer here; the row stays until
the actor's commit replaces or clears it, so a crash in between fires it again at the next
start (once in effect: the event is void unless the conversation is still at the step that set
it). A burst of due timers waits while the engine's backlog is full.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Iterable

from .ports import Clock, Store, Timer, TimerWrite

log = logging.getLogger(__name__)

PAGE = 1000  # timers read from the store at a time
BUSY_WAIT = 1.0  # seconds to wait before firing more while the backlog is full

Key = tuple[float, str, str]  # (due, contact, kind)


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        fire: Callable[[TimerWrite], None],
        *,
        busy: Callable[[], bool] = lambda: False,
        page: int = PAGE,
    ) -> None:
        self._store = store
        self._clock = clock
        self._fire = fire
        self._busy = busy
        self._page = page
        self._heap: list[tuple[Key, TimerWrite]] = []
        self._live: dict[tuple[str, str], TimerWrite] = {}  # (contact, kind) -> in the window
        self._horizon: Key | None = None  # None: every stored timer is in memory
        self._handle: Timer | None = None
        self._loader: asyncio.Task[None] | None = None
        self._noted: dict[tuple[str, str], TimerWrite] | None = None  # notes during a load
        self._running = False
        self.fired = 0

    @property
    def held(self) -> int:
        """Timers held in memory (at most about two pages)."""
        return len(self._live)

    async def start(self) -> None:
        """Read the first page and arm: timers already due fire at once."""
        self._running = True
        await self._load(None)
        self._arm()

    async def stop(self) -> None:
        self._running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._loader is not None:
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)
            self._loader = None

    def note(self, writes: Iterable[TimerWrite]) -> None:
        """Committed timer writes: keep the window true and the handle on the earliest."""
        changed = False
        for w in writes:
            if self._noted is not None:
                self._noted[(w.contact, w.kind)] = w
            changed |= self._apply(w)
        if changed and self._running:
            self._trim()
            self._arm()

    # --- the window ----------------------------------------------------------------------

    def _apply(self, w: TimerWrite) -> bool:
        key = (w.contact, w.kind)
        had = self._live.pop(key, None) is not None
        if w.due is not None and (self._horizon is None or w.order <= self._horizon):
            self._live[key] = w
            heapq.heappush(self._heap, (w.order, w))
            return True
        return had

    def _trim(self) -> None:
        """Keep memory bounded: past two pages, keep the soonest page and lower the horizon."""
        if len(self._live) <= 2 * self._page:
            return
        kept = sorted(self._live.values(), key=lambda t: t.order)[: self._page]
        self._live = {(t.contact, t.kind): t for t in kept}
        self._heap = [(t.order, t) for t in kept]
        heapq.heapify(self._heap)
        self._horizon = kept[-1].order

    async def _load(self, after: Key | None) -> None:
        self._noted = {}
        try:
            rows = await self._store.timers(after, self._page)
        finally:
            noted, self._noted = self._noted, None
        self._horizon = rows[-1].order if len(rows) == self._page else None
        for row in rows:
            if (row.contact, row.kind) not in noted:  # a note is newer than what was read
                self._apply(row)
        for w in noted.values():
            self._apply(w)

    def _next_page(self) -> None:
        if self._loader is not None or self._horizon is None or not self._running:
            return
        horizon = self._horizon

        async def load() -> None:
            try:
                await self._load(horizon)
            except Exception as e:
                log.error("cannot read timers (%s); trying again in %.0fs", e, BUSY_WAIT * 5)
                await self._clock.sleep(BUSY_WAIT * 5)
            finally:
                self._loader = None
            self._arm()

        self._loader = asyncio.create_task(load(), name="timers:load")

    # --- firing --------------------------------------------------------------------------

    def _head(self) -> TimerWrite | None:
        while self._heap:
            _order, timer = self._heap[0]
            if self._live.get((timer.contact, timer.kind)) is timer:
                return timer
            heapq.heappop(self._heap)  # replaced or cleared since it was pushed
        return None

    def _arm(self) -> None:
        if not self._running:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        head = self._head()
        if head is None:
            self._next_page()
            return
        assert head.due is not None
        self._handle = self._clock.call_later(max(head.due - self._clock.now(), 0.0), self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._clock.now()
        while (head := self._head()) is not None and head.due is not None and head.due <= now:
            if self._busy():
                self._handle = self._clock.call_later(BUSY_WAIT, self._tick)
                return
            heapq.heappop(self._heap)
            del self._live[(head.contact, head.kind)]
            self.fired += 1
            try:
                self._fire(head)
            except Exception:
                log.exception("firing a timer of %s failed", head.contact)
        self._arm()
