"""A clock that moves only when the test says so.

`advance(seconds)` fires every timer and wakes every sleeper that falls due on the way, in
order, setting `now()` to each one's due time before it runs, and lets the event loop run
what they started before it moves on. A ten-minute outage is then a loop of `advance` calls
that takes milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Entry:
    due: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self._now = now
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        # Awaited after each timer fires: lets real I/O the timer started finish first.
        self.settle: Callable[[], Awaitable[None]] | None = None

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _Entry:
        entry = _Entry(self._now + max(seconds, 0.0), next(self._seq), callback)
        heapq.heappush(self._heap, entry)
        return entry

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self.call_later(seconds, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            entry.cancel()

    def pending(self) -> list[float]:
        """Due times of the timers still waiting, soonest first."""
        return sorted(e.due for e in self._heap if not e.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, running everything that falls due on the way."""
        target = self._now + seconds
        await self._run_loop()
        while self._heap and self._heap[0].due <= target:
            entry = heapq.heappop(self._heap)
            if entry.cancelled:
                continue
            self._now = max(self._now, entry.due)
            entry.callback()
            await self._run_loop()
        self._now = target
        await self._run_loop()

    async def _run_loop(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        if self.settle is not None:
            await self.settle()
