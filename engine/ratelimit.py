"""A token bucket: sends from one business number paced at `rate` a second.

The bucket holds `burst` tokens (a tenth of a second's worth: the few messages of one reply go
at once), so that no one-second window holds more than rate + burst sends; a bucket as deep as
the rate would let twice the rate through in the first second.

Pure and clock-free: the caller passes the time, and gets back how long to wait when no token
is left (it parks the contact for that long rather than holding a worker), so the limit is
tested from a table. A ready-made limiter (aiolimiter) awaits the event loop's own clock inside
the call; here time is injected and waiting must not occupy a send worker.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_WAIT = 0.001


@dataclass(slots=True)
class Bucket:
    rate: float  # tokens a second
    burst: float = 1.0  # the most the bucket holds
    tokens: float = -1.0  # -1: full at the first call
    at: float = 0.0

    def take(self, now: float) -> float:
        """Take a token and return 0.0, or return the seconds until one is there (none taken)."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        elif now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        # At least a millisecond: a wait of a few nanoseconds is lost in the float of a Unix
        # time (its step is ~0.2 us today), and the caller would come back to the same instant.
        return max((1.0 - self.tokens) / self.rate, MIN_WAIT)
