"""Real time: the Clock the process runs on (tests inject one they move by hand).

Wall-clock seconds for what is stored and shown (message times, hand-off deadlines, ages);
the event loop's own timers for waiting, so a change of the system clock does not stretch a
wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .ports import Timer


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(seconds, callback)
