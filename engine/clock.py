"""Real time: the Clock the process runs on (tests inject one they move by hand).

Wall-clock seconds for what is stored and shown (message times, hand-off deadlines, ages);
the event loop's own timers for waiting, so a change of the system clock does not stretch a
wait.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable

from .ports import Timer


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(seconds, callback)


class SkippableClock:
    """Real time that can also jump ahead: `python -m engine chat`'s `/wait 30m` moves it, and
    every timer and sleeper that falls due on the way runs, in order (a reminder can be tried
    without waiting half an hour). Between jumps it runs like SystemClock."""

    def __init__(self, start: float | None = None) -> None:
        # start: the time it reads now (flows test starts every test on the same morning)
        self._skipped = 0.0 if start is None else start - time.time()
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = 0
        self._handle: asyncio.TimerHandle | None = None

    def now(self) -> float:
        return time.time() + self._skipped

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        entry = self.call_later(seconds, wake)
        try:
            await future
        finally:
            entry.cancel()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        self._seq += 1
        entry = _Entry(callback)
        heapq.heappush(self._heap, (self.now() + max(seconds, 0.0), self._seq, entry))
        self._arm()
        return entry

    def skip(self, seconds: float) -> int:
        """Jump `seconds` ahead at once; return how many timers fell due on the way."""
        self._skipped += seconds
        return self._fire()

    async def advance(self, seconds: float, settle: Callable[[], Awaitable[None]]) -> int:
        """Move `seconds` ahead through every timer due on the way, in order: time stops at
        each one's due time, it runs, and `settle` lets what it started finish (and set the
        next timers, counted from then) before time moves on. Returns how many ran."""
        target = self.now() + seconds
        fired = 0
        await settle()
        for _ in range(100_000):  # a sleeper that re-arms itself at once cannot spin this
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            if not self._heap or self._heap[0][0] > target:
                break
            due = self._heap[0][0]
            self._skipped += max(due - self.now(), 0.0)
            fired += self._fire()
            await settle()
        self._skipped += max(target - self.now(), 0.0)
        fired += self._fire()
        await settle()
        return fired

    def _fire(self) -> int:
        fired = 0
        while self._heap and self._heap[0][0] <= self.now():
            _due, _seq, entry = heapq.heappop(self._heap)
            if not entry.cancelled:
                fired += 1
                entry.callback()
        self._arm()
        return fired

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if self._heap:
            delay = max(self._heap[0][0] - self.now(), 0.0)
            self._handle = asyncio.get_running_loop().call_later(delay, self._fire)


class _Entry:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
