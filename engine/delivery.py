"""Delivery: the outbox, sent in order per contact, retried with backoff, never inside a request.

Each contact with messages to send has a FIFO; a fixed pool of workers takes contacts from a
ready queue, sends the head message, records what the provider answered, and puts the contact
back if it has more. A contact is never in two workers at once, so its replies reach the provider
in the order the flow produced them. A retryable failure (5xx, 429, rate limits, timeouts) parks
the contact for a backoff; a permanent one is recorded on the message and the contact moves on
to its next message.

The send is recorded as soon as the provider answers. A crash between the provider accepting a
message and that record being durable is the one window in which a restart sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Callable

from .committer import Committer, retrying
from .errors import PermanentDelivery, RetryableDelivery
from .logs import mask
from .metrics import Metrics
from .outbound import from_json
from .ports import Delivered, MessageRow, Outgoing, Sender

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12  # about eight minutes of backoff before a message is given up as failed
PAIR_RATE_LIMIT = 131056  # too many messages to one user: WhatsApp asks for 4^n seconds


def backoff(attempt: int, code: int | None, retry_after: float | None, jitter: float) -> float:
    """Seconds to wait before attempt `attempt + 1`; `jitter` is in [0, 1)."""
    if retry_after is not None and retry_after > 0:
        return min(retry_after, 300.0)
    if code == PAIR_RATE_LIMIT:
        return float(min(4.0 ** (attempt - 1), 256.0))
    base = min(0.5 * 2 ** (attempt - 1), 60.0)
    return float(base * (0.5 + jitter / 2))


# What waits in memory per message: (id, contact, number, payload JSON). Tuples of strings are
# untracked by the garbage collector, so a large backlog costs collections nothing.
Pending = tuple[str, str, str, str]


class Delivery:
    def __init__(
        self,
        sender: Sender,
        committer: Committer,
        metrics: Metrics,
        *,
        clock: Callable[[], float],
        concurrency: int = 32,
        jitter: Callable[[], float] = random.random,
        policy: Callable[[int, int | None, float | None, float], float] = backoff,
    ) -> None:
        self._sender = sender
        self._committer = committer
        self._metrics = metrics
        self._clock = clock
        self._jitter = jitter
        self._policy = policy
        self._concurrency = concurrency
        self._queues: dict[str, deque[Pending]] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._attempts: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closing = False
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._quiet = asyncio.Event()  # set while no send is under way
        self._quiet.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.pending = 0

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"sender-{i}") for i in range(self._concurrency)
        ]

    def enqueue(self, rows: list[MessageRow]) -> None:
        for row in rows:
            assert row.payload is not None
            queue = self._queues.get(row.contact)
            if queue is None:
                queue = self._queues[row.contact] = deque()
                self._ready.put_nowait(row.contact)
            queue.append((row.id, row.contact, row.number, row.payload))
            self.pending += 1
        if self.pending:
            self._empty.clear()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def stop(self, grace: float) -> None:
        """Let sends under way finish for up to `grace` seconds, then stop every worker."""
        self._closing = True  # workers take nothing new
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), grace)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        while True:
            contact = await self._ready.get()
            if self._closing:
                return
            queue = self._queues.get(contact)
            if not queue:
                continue
            self._in_flight += 1
            self._quiet.clear()
            try:
                delay = await self._attempt(queue[0])
            except Exception:  # a bug here must not cost the pool a worker, nor wedge the contact
                log.exception("delivery of %s failed unexpectedly; dropped", queue[0][0])
                self._metrics.outbound.inc("failed", "")
                delay = None
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._quiet.set()
            if delay is not None:
                loop = asyncio.get_running_loop()
                self._timers[contact] = loop.call_later(delay, self._resume, contact)
                continue
            queue.popleft()
            self.pending -= 1
            if queue:
                self._ready.put_nowait(contact)
            else:
                del self._queues[contact]
                if not self._queues:
                    self._empty.set()

    def _resume(self, contact: str) -> None:
        self._timers.pop(contact, None)
        self._ready.put_nowait(contact)

    async def _attempt(self, item: Pending) -> float | None:
        """Send one message; return a delay to retry after, or None when it is settled."""
        ident, contact, number, payload = item
        try:
            try:
                data = json.loads(payload)
                out = Outgoing(
                    id=ident,
                    contact=contact,
                    number=number,
                    phone=data.get("phone"),
                    user_id=data.get("user_id"),
                    message=from_json(data["message"]),
                )
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise PermanentDelivery(f"unreadable outbox payload: {e!r}") from e
            try:
                provider_id = await self._sender.send(out)
            except (RetryableDelivery, PermanentDelivery):
                raise
            except Exception as e:  # a sender bug must not wedge the contact: retry like a 5xx
                log.exception("sender raised for %s", ident)
                raise RetryableDelivery(f"sender error: {e!r}") from e
        except RetryableDelivery as e:
            attempt = self._attempts.get(ident, 0) + 1
            code = str(e.code or e.status or "")
            if attempt < MAX_ATTEMPTS:
                self._attempts[ident] = attempt
                # maybe_sent: the provider may already have it, so this retry may duplicate it
                self._metrics.outbound.inc(
                    "retried_maybe_sent" if e.maybe_sent else "retried", code
                )
                delay = self._policy(attempt, e.code, e.retry_after, self._jitter())
                log.info("send %s to %s: %s; retry in %.1fs", ident, mask(contact), e, delay)
                return delay
            await self._settle(ident, contact, failed=e.code or e.status, title=f"gave up: {e}")
        except PermanentDelivery as e:
            await self._settle(ident, contact, failed=e.code or e.status, title=str(e))
        else:
            await self._settle(ident, contact, provider_id=provider_id)
        return None

    async def _settle(
        self,
        ident: str,
        contact: str,
        *,
        provider_id: str | None = None,
        failed: int | None = None,
        title: str | None = None,
    ) -> None:
        self._attempts.pop(ident, None)
        if provider_id is not None:
            op = Delivered(ident, "accepted", self._clock(), provider_id=provider_id)
            self._metrics.outbound.inc("accepted", "")
        else:
            op = Delivered(ident, "failed", self._clock(), error_code=failed, error_title=title)
            self._metrics.outbound.inc("failed", str(failed or ""))
            log.warning("message %s to %s failed: %s", ident, mask(contact), title)
        await retrying(lambda: self._committer.submit(op))
