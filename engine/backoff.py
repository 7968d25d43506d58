"""The one backoff policy: how long to wait before trying something again.

Every retry in the engine (a store that is down, a contact the provider asks to slow down, the
probe of a paused business number) asks the same pure function; only the parameters differ.
It never sleeps and never reads a clock or a random source: the caller passes `rand`, so the
policy is tested from a table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: `base * factor ** (attempt - 1)`, at most `cap` seconds.

    `jitter` is the share of the delay that `rand` (in [0, 1)) may take away, so that many
    waiters do not all come back in the same instant: with jitter 0.5 the delay falls in
    [half, full]. A provider's own `retry_after` wins, bounded by `base` below (a Retry-After
    of 0.01 must not become a storm of requests) and `max_retry_after` above.
    """

    base: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.5
    max_retry_after: float = 300.0

    def delay(self, attempt: int, rand: float = 1.0, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first failure)."""
        if retry_after is not None and retry_after > 0:
            return max(min(retry_after, self.max_retry_after), self.base)
        exponent = max(attempt, 1) - 1
        # Past the cap the exponent only grows the number, never the delay.
        full = self.cap if exponent >= 64 else min(self.base * self.factor**exponent, self.cap)
        return full * (1.0 - self.jitter * (1.0 - min(max(rand, 0.0), 1.0)))


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds, or None (absent, an HTTP date, negative, NaN, a day or
    more: not worth trusting)."""
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86400 else None


# The store is down: come back soon, then every few seconds (writes wait in order meanwhile).
STORE = Backoff(base=0.05, cap=5.0, jitter=0.0)
# A paused business number is probed at least every 30 seconds, even if the provider asks for
# a longer wait.
PROBE = Backoff(base=1.0, cap=30.0, max_retry_after=30.0)
# Only one recipient must wait (WhatsApp's pair rate limit, 131056, asks for 4^n seconds).
CONTACT = Backoff(base=1.0, cap=300.0, factor=4.0, jitter=0.0)
