"""Delivery: the outbox, sent in order per contact; an outage is a state of the business number,
not of each message.

Each contact with messages to send has a FIFO; a pool of workers takes ready contacts, sends the
head message, records what the provider answered and puts the contact back if it has more. A
contact is never in two workers at once, so its replies reach the provider in the order the flow
produced them.

A failed send says what has to wait (engine.errors):

- ChannelDown (5xx, timeouts, connection errors, throughput limits, a rejected token, an account
  problem): the business number is paused. Its contacts are held with their messages untouched.
  After a backoff of at most 30 seconds one probe goes out (the head message of one held contact,
  each in turn), and the first probe the provider answers resumes the number: every held contact
  is ready again, each in its own order. A failed probe only sets the time of the next one.
- RetryableDelivery (the provider's per-recipient pair rate, or an unknown error tried a few
  times): only that contact waits. So does a message that keeps failing like an outage while
  its number delivers other messages in between: that message is the problem, not the provider.
- PermanentDelivery (an error about the message itself): the message is recorded as failed and
  the contact moves on to its next one. Outside the 24-hour window (OutsideWindow, or a window
  known to have closed while it waited) its template fallback goes instead, when it has one.

No message is given up for its number of attempts (but an unknown error's). One that the
provider has not accepted within
`max_age` of its number's up-time (time paused does not count, nor time before this process
started) is recorded as failed; until then it stays `pending` in the transcript, whatever it
waits for.

Before a send leaves, its row records that it is in flight (`Sending`); the provider's answer is
recorded as soon as it comes, ahead of other writes. After a crash, a row that says a send left
but not what came of it is in doubt: it waits, with its contact's later messages, until a status
webhook names it (`claim`: the provider has it, so it is recorded as accepted) or the reconcile
period after intake opened is over (`open`), and then goes again. What remains of the window in
which a restart sends a message twice: a status webhook that comes only after that period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from .backoff import CONTACT, PROBE
from .committer import Committer, retrying
from .errors import (
    BadMessage,
    ChannelDown,
    OptedOut,
    OutsideWindow,
    PermanentDelivery,
    RetryableDelivery,
    StoreRejected,
)
from .logs import mask
from .metrics import Metrics
from .outbound import OUTSIDE_WINDOW, OutMessage, TemplateMessage, from_json, kind_of, preview
from .ports import Clock, Delivered, MessageRow, Outgoing, Sender, Sending, Timer
from .ratelimit import Bucket

log = logging.getLogger(__name__)

# What waits in memory per message: (id, contact, number, payload JSON, born). `born` is the
# up-time of its number when it was queued. Tuples of strings and floats are untracked by the
# garbage collector, so a large backlog costs collections nothing.
Pending = tuple[str, str, str, str, float]

DONE = "done"  # the message is settled: accepted or failed
RECEIPT = "read:"  # the id of a read receipt in a contact's queue (never a stored message)
RECENT = 10_000  # accepted sends remembered for a failed status that comes later
WINDOW_CODES = frozenset({131047, 63016})  # outside the 24-hour window (Meta, Twilio)
# The customer stopped marketing messages: for good (None), or for a while (seconds).
OPT_OUT_CODES: dict[int, float | None] = {131050: None, 21610: None, 131049: 24 * 3600.0}
STOP_CODE = 21610  # Twilio: the customer replied STOP, and every message is refused
HOLD = "hold"  # the number is down: the contact waits for it


@dataclass(frozen=True, slots=True)
class Down:
    """Why a number is paused, since when, and what the provider said last."""

    cause: str  # outage | throttled | auth
    detail: str
    code: int | None
    since: float


@dataclass(eq=False, slots=True)
class Line:
    """One business number's delivery state."""

    number: str
    down: Down | None = None
    held: deque[str] = field(default_factory=deque)  # contacts waiting for the number
    probe: str | None = None  # the contact whose head message is the probe under way
    failed_probes: int = 0
    timer: Timer | None = None  # the next probe
    paused_total: float = 0.0  # seconds spent paused before the current pause
    accepted: int = 0  # messages the provider accepted from this number
    pending: int = 0  # messages of this number waiting to be settled
    bucket: Bucket | None = None  # its throughput limit (None: none)

    def uptime(self, now: float) -> float:
        """A clock that stands still while the number is paused."""
        paused = self.paused_total + (now - self.down.since if self.down else 0.0)
        return now - paused


@dataclass(slots=True)
class Failing:
    """A message the provider has not accepted yet, and what happened to it so far."""

    count: int  # failed attempts
    error: str  # the last one's error
    mark: int  # its number's accepted sends at the last failure
    alone: bool = False  # it failed while other messages of its number were accepted


@dataclass(frozen=True, slots=True)
class Paused:
    """A paused number as operators see it (readiness, metrics)."""

    number: str
    cause: str
    detail: str
    since: float
    waiting: int


class Delivery:
    def __init__(
        self,
        sender: Sender,
        committer: Committer,
        metrics: Metrics,
        *,
        clock: Clock,
        concurrency: int = 32,
        max_age: float = 24 * 3600.0,
        rand: Callable[[], float] = random.random,
        on_opt_out: Callable[[str, float | None, bool], None] = lambda c, seconds, every: None,
        reconcile: float = 10.0,
        rate: float | None = 80.0,
        on_fallback: Callable[[str, str, TemplateMessage], None] = lambda c, i, t: None,
    ) -> None:
        self._on_fallback = on_fallback  # a send failed later outside the window: its template
        # Recent sends the provider accepted, by its id, for a `failed` status that comes
        # after: provider id -> (our id, contact, payload). Bounded; lost on restart.
        self._recent: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self._rate = rate  # sends a second per business number (WhatsApp's default: 80)
        self._reconcile = reconcile
        # Sends a crash left in flight (their rows say a send left, none says what came of it):
        # id -> contact. Each waits, with its contact's later messages, until a status webhook
        # names it (`claim`) or the reconcile period after `open` has passed.
        self._doubts: dict[str, str] = {}
        self._claims: dict[str, str] = {}  # doubtful id -> the provider id a status gave it
        self._reconciling: set[str] = set()  # contacts whose head message is doubtful
        self._released = False  # the reconcile period is over
        self._release_timer: Timer | None = None
        self._marked: set[str] = set()  # ids whose Sending this process recorded
        self._on_opt_out = on_opt_out  # the customer stopped marketing messages (for seconds)
        self._sender = sender
        self._committer = committer
        self._metrics = metrics
        self._clock = clock
        self._rand = rand
        self._concurrency = concurrency
        self._max_age = max_age
        self._started = clock.now()
        self._queues: dict[str, deque[Pending]] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._lines: dict[str, Line] = {}
        self._failures: dict[str, Failing] = {}  # by message id
        self._parked: dict[str, Timer] = {}  # contacts waiting out their own backoff
        self._closing = False
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._quiet = asyncio.Event()  # set while no send is under way
        self._quiet.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._settled = asyncio.Event()  # set while nothing waits for a number that sends
        self._settled.set()
        self.pending = 0

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"sender-{i}") for i in range(self._concurrency)
        ]

    def open(self) -> None:
        """Intake is open: status webhooks can arrive, so the reconcile period starts."""
        if self._doubts and not self._released:
            log.info(
                "%d sends were in flight at the last stop; each waits up to %.0fs for a status "
                "webhook saying the provider has it, then goes again",
                len(self._doubts),
                self._reconcile,
            )
        self._release_timer = self._clock.call_later(self._reconcile, self._release)

    def _release(self) -> None:
        self._release_timer = None
        self._released = True
        for contact in self._reconciling:
            self._ready.put_nowait(contact)
        self._reconciling.clear()

    def claim(self, ref: str, provider_id: str) -> bool:
        """A status webhook echoes `ref` (our id, sent as biz_opaque_callback_data) for
        `provider_id`: if that is a send a crash left in doubt, the provider has it, so it is
        recorded as accepted instead of sent again. True when it was such a send."""
        contact = self._doubts.get(ref)
        if contact is None or ref in self._claims:
            return False
        self._claims[ref] = provider_id
        if contact in self._reconciling:
            self._reconciling.discard(contact)
            self._ready.put_nowait(contact)
        return True

    def receipt(self, contact: str, number: str, message_id: str, *, typing: bool) -> None:
        """Mark the customer's message read (and show "typing...") ahead of the replies to it.
        Not stored: a crash loses only the blue ticks."""
        payload = json.dumps({"read": message_id, "typing": typing})
        line = self._line(number)
        queue = self._queues.get(contact)
        if queue is None:
            queue = self._queues[contact] = deque()
            self._ready.put_nowait(contact)
        born = line.uptime(self._clock.now())
        queue.append((f"{RECEIPT}{message_id}", contact, number, payload, born))
        line.pending += 1
        self.pending += 1
        self._empty.clear()
        self._check_settled()

    def failed_later(self, provider_id: str, code: int) -> None:
        """A status webhook says a send the provider had accepted failed with `code`: outside
        the window its template fallback is sent after all; a customer who stopped marketing
        messages is recorded. Sends older than the last RECENT accepted are not known."""
        known = self._recent.pop(provider_id, None)
        if known is None:
            return
        ident, contact, payload = known
        if code in WINDOW_CODES:
            try:
                message = from_json(json.loads(payload)["message"])
            except (ValueError, KeyError, TypeError):
                return
            fallback = getattr(message, "fallback", None)
            if isinstance(fallback, TemplateMessage):
                self._metrics.templates.inc("window")
                self._on_fallback(contact, ident, fallback)
        elif code in OPT_OUT_CODES:
            self._on_opt_out(contact, OPT_OUT_CODES[code], code == STOP_CODE)

    def enqueue(self, rows: list[MessageRow]) -> None:
        now = self._clock.now()
        for row in rows:
            assert row.payload is not None
            if row.sending_at is not None and not self._released:
                self._doubts[row.id] = row.contact
            line = self._line(row.number)
            # Time before this process started is not counted: it may have been an outage.
            born = line.uptime(now) - max(0.0, now - max(row.at, self._started))
            queue = self._queues.get(row.contact)
            if queue is None:
                queue = self._queues[row.contact] = deque()
                self._ready.put_nowait(row.contact)
            queue.append((row.id, row.contact, row.number, row.payload, born))
            line.pending += 1
            self.pending += 1
        if self.pending:
            self._empty.clear()
        self._check_settled()

    def paused(self) -> list[Paused]:
        """The numbers paused now, with why and how many contacts wait."""
        return [
            Paused(
                line.number,
                line.down.cause,
                line.down.detail,
                line.down.since,
                len(line.held) + (line.probe is not None),
            )
            for line in self._lines.values()
            if line.down is not None
        ]

    @property
    def active(self) -> int:
        """Messages waiting for numbers that are not paused: what should drain soon."""
        return self.pending - sum(line.pending for line in self._lines.values() if line.down)

    def held_beyond(self, number: str, limit: int) -> bool:
        """The number is paused and holds more than `limit` messages."""
        line = self._lines.get(number)
        return line is not None and line.down is not None and line.pending > limit

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def wait_settled(self) -> None:
        """Return once every message waiting is held by a paused number (or none waits)."""
        await self._settled.wait()

    def _check_settled(self) -> None:
        if self.active:
            self._settled.clear()
        else:
            self._settled.set()

    async def wait_quiet(self) -> None:
        """Return once no send is under way."""
        await self._quiet.wait()

    def busy(self) -> bool:
        """A send is under way, or a contact is ready for one."""
        return self._in_flight > 0 or not self._ready.empty()

    async def stop(self, grace: float) -> None:
        """Let sends under way finish for up to `grace` seconds, then stop every worker."""
        self._closing = True  # workers take nothing new
        timers = [*self._parked.values(), *(line.timer for line in self._lines.values())]
        for timer in [*timers, self._release_timer]:
            if timer is not None:
                timer.cancel()
        self._parked.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), grace)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    # --- the workers -------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            contact = await self._ready.get()
            if self._closing:
                return
            queue = self._queues.get(contact)
            if not queue:
                continue
            head = queue[0][0]
            if head in self._doubts and head not in self._claims and not self._released:
                self._reconciling.add(contact)  # it may have gone: wait for a status webhook
                continue
            line = self._line(queue[0][2])
            if line.down is not None and line.probe != contact:
                line.held.append(contact)
                continue
            receipt = queue[0][0].startswith(RECEIPT)  # not a message: WhatsApp's limit is on those
            bucket = line.bucket if not receipt else None
            wait = bucket.take(self._clock.now()) if bucket is not None else 0.0
            if wait > 0:  # over the number's rate: the contact comes back when a send is free
                self._metrics.rate_waits.inc()
                self._parked[contact] = self._clock.call_later(wait, partial(self._unpark, contact))
                continue
            self._in_flight += 1
            self._quiet.clear()
            try:
                step = await self._attempt(line, contact, queue[0])
            except Exception:
                # A bug here must not cost the pool a worker, nor lose the message (its row is
                # still pending on disk): the contact tries again later, in order.
                log.exception("delivery of %s failed unexpectedly; retried later", queue[0][0])
                self._metrics.outbound.inc("retried", "bug")
                step = CONTACT.cap
            finally:
                self._in_flight -= 1
                if not self._in_flight:
                    self._quiet.set()
            self._next(line, contact, queue, step)

    def _next(self, line: Line, contact: str, queue: deque[Pending], step: str | float) -> None:
        if step == HOLD:
            if line.down is not None:
                line.held.append(contact)
            else:
                self._ready.put_nowait(contact)
        elif isinstance(step, float):
            self._parked[contact] = self._clock.call_later(step, partial(self._unpark, contact))
        else:
            queue.popleft()
            line.pending -= 1
            self.pending -= 1
            self._check_settled()
            if queue:
                self._ready.put_nowait(contact)
                return
            del self._queues[contact]
            if line.probe == contact:  # its last message was given up: probe with another one
                line.probe = None
                self._schedule_probe(line, None, at_once=True)
            if not self._queues:
                self._empty.set()

    def _unpark(self, contact: str) -> None:
        self._parked.pop(contact, None)
        if not self._closing:
            self._ready.put_nowait(contact)

    async def _attempt(self, line: Line, contact: str, item: Pending) -> str | float:
        """Send one message; say what the contact does next: DONE, HOLD or a delay to wait."""
        ident = item[0]
        if await self._settled_without_sending(line, contact, item):
            return DONE
        probe = line.probe == contact
        if ident not in self._marked:
            # Durable before the send leaves: after a crash, this row says it may have gone.
            sending = Sending(ident, self._clock.now())
            await retrying(lambda: self._committer.submit(sending, urgent=True), self._clock)
            self._marked.add(ident)
        try:
            provider_id, instead = await self._deliver(_outgoing(item))
        except ChannelDown as e:
            if self._isolated(line, ident, e):
                # It failed before, and its number has delivered other messages since: this
                # message is the problem, not the provider. Only its contact waits.
                failures = self._count_retry(ident, e, line, alone=True)
                # As often as a paused number is probed: a partial outage looks like this too,
                # and those messages must go out soon after it ends.
                delay = PROBE.delay(failures, self._rand())
                log.info(
                    "send %s to %s fails alone: %s; retry in %.0fs", ident, mask(contact), e, delay
                )
                return delay
            self._count_retry(ident, e, line)
            self._down(line, e, probe=probe)
            return HOLD
        except RetryableDelivery as e:
            if probe:  # an answer about this recipient: the number works again
                self._probed(line, e)
            failures = self._count_retry(ident, e, line)
            if e.attempts is not None and failures >= e.attempts:
                await self._settle(ident, contact, failed=e.code or e.status, title=str(e))
                return DONE
            delay = CONTACT.delay(failures, retry_after=e.retry_after)
            log.info("send %s to %s: %s; retry in %.0fs", ident, mask(contact), e, delay)
            return delay
        except PermanentDelivery as e:
            if probe:
                self._probed(line, e)
            await self._refused(ident, contact, item, e)
            return DONE
        await self._accepted(line, item, provider_id, instead, probe=probe)
        return DONE

    async def _accepted(
        self,
        line: Line,
        item: Pending,
        provider_id: str | None,
        instead: TemplateMessage | None,
        *,
        probe: bool,
    ) -> None:
        """Record what a send came to: accepted (with what went instead), or not sent at all
        (the window had closed and there was no fallback)."""
        ident, contact = item[0], item[1]
        if provider_id is None:
            self._metrics.not_sent.inc("window")
            await self._settle(ident, contact, failed=None, title=OUTSIDE_WINDOW)
            return
        line.accepted += 1
        if probe:
            self._resume(line)
        if instead is None:  # its fallback is still unused: a failed status may call for it
            # Kept whole only when it has a fallback: 10,000 payloads are not free.
            payload = item[3] if '"fallback"' in item[3] else "{}"
            self._recent[provider_id] = (ident, contact, payload)
            if len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        await self._settle(ident, contact, provider_id=provider_id, instead=instead)

    async def _receipt(self, item: Pending) -> None:
        """A read receipt goes once, whatever the provider says: it is not worth a retry."""
        data = json.loads(item[3])
        try:
            await self._sender.mark_read(item[2], data["read"], typing=data["typing"])
        except Exception as e:
            log.info("read receipt for %s not sent: %s", mask(item[1]), e)
            self._metrics.receipts.inc("failed")
        else:
            self._metrics.receipts.inc("sent")

    async def _settled_without_sending(self, line: Line, contact: str, item: Pending) -> bool:
        """Settle a message that must not be sent: one a status webhook claimed after a crash
        (the provider has it), or one too old to send; or send a read receipt."""
        ident, born = item[0], item[4]
        if ident.startswith(RECEIPT):
            await self._receipt(item)
            return True
        if ident in self._doubts:
            self._doubts.pop(ident)
            claimed = self._claims.pop(ident, None)
            self._metrics.reconciled.inc("claimed" if claimed else "resent")
            if claimed is not None:
                if line.probe == contact:  # nothing was asked of the provider: probe again
                    line.probe = None
                    self._schedule_probe(line, None, at_once=True)
                await self._settle(ident, contact, provider_id=claimed)
                return True
        if line.uptime(self._clock.now()) - born > self._max_age:
            failing = self._failures.get(ident)
            last = failing.error if failing else "none"
            await self._settle(
                ident,
                contact,
                failed=None,
                title=f"gave up: not accepted within {_span(self._max_age)} (last error: {last})",
            )
            return True
        return False

    async def _deliver(self, out: Outgoing) -> tuple[str | None, TemplateMessage | None]:
        """Send `out`, or its template fallback when the window has closed: (the provider's
        id, the template that went instead). No id: the window had closed and there is no
        fallback, so nothing was sent (the provider would refuse it)."""
        if _closed(out, self._clock.now()):  # it waited past the window (its number paused)
            late = self._instead(out, None)
            if late is None:
                return None, None
            return await self._send(replace(out, message=late)), late
        try:
            return await self._send(out), None
        except OutsideWindow as e:
            late = self._instead(out, e)
            if late is None:
                raise
            return await self._send(replace(out, message=late)), late

    def _instead(self, out: Outgoing, e: OutsideWindow | None) -> TemplateMessage | None:
        """The template that goes in place of a free-form message outside the window."""
        message = out.message
        if isinstance(message, TemplateMessage) or message.fallback is None:
            return None
        log.info(
            "send %s to %s: %s%s; its template %s goes instead",
            out.id,
            mask(out.contact),
            OUTSIDE_WINDOW,
            f" ({e.code})" if e is not None and e.code else "",
            message.fallback.name,
        )
        self._metrics.templates.inc("window")
        return message.fallback

    async def _refused(self, ident: str, contact: str, item: Pending, e: PermanentDelivery) -> None:
        """Record a message the provider will never accept, with what follows from why."""
        title = str(e)
        if isinstance(e, OutsideWindow):
            self._metrics.not_sent.inc("window")
            title = f"{OUTSIDE_WINDOW} {title}"
        elif isinstance(e, OptedOut):
            self._on_opt_out(contact, e.seconds, e.everything)
        elif isinstance(e, BadMessage):
            out = _outgoing(item)
            log.error(
                "the provider refused message %s as malformed: %s; it came from flow %s, "
                "step %r (fix the flow: every message built there fails the same way)",
                ident,
                e,
                out.flow,
                out.state,
            )
        await self._settle(ident, contact, failed=e.code or e.status, title=title)

    async def _send(self, out: Outgoing) -> str:
        try:
            return await self._sender.send(out)
        except (RetryableDelivery, PermanentDelivery):
            raise
        except Exception as e:  # a sender bug must not lose the message, nor stop the number
            log.exception("sender raised for %s", out.id)
            raise RetryableDelivery(f"sender error: {e!r}", local=True) from e

    def _probed(self, line: Line, e: RetryableDelivery | PermanentDelivery) -> None:
        """A probe that did not go through: the provider's answer about the message means the
        number works; an error of our own (the message could not be built or sent) says nothing
        about the provider, so the number stays paused and another contact probes next."""
        if not e.local:
            self._resume(line)
        elif line.down is not None:
            line.probe = None
            line.failed_probes += 1
            self._metrics.probes.inc("failed")
            self._schedule_probe(line, None)

    def _isolated(self, line: Line, ident: str, e: ChannelDown) -> bool:
        """An outage-like failure of a message that failed before, while other messages of its
        number were accepted in between, is about the message: it must not pause the number
        (one message the provider always answers with a 500 would otherwise stall it). Once
        judged so, it stays so; a real outage shows in the other messages' failures."""
        before = self._failures.get(ident)
        return (
            e.cause == "outage"
            and line.down is None
            and before is not None
            and (before.alone or line.accepted > before.mark)
        )

    def _count_retry(
        self, ident: str, e: RetryableDelivery, line: Line, *, alone: bool = False
    ) -> int:
        before = self._failures.get(ident)
        failing = Failing(
            count=(before.count if before else 0) + 1,
            error=str(e),
            mark=line.accepted,
            alone=alone or (before is not None and before.alone),
        )
        self._failures[ident] = failing
        failures = failing.count
        # maybe_sent: the provider may already have it, so this retry may show it twice
        result = "retried_maybe_sent" if e.maybe_sent else "retried"
        self._metrics.outbound.inc(result, str(e.code or e.status or ""))
        return failures

    # --- the state of a number ---------------------------------------------------------------

    def _line(self, number: str) -> Line:
        line = self._lines.get(number)
        if line is None:
            bucket = Bucket(self._rate, burst=max(1.0, self._rate / 10)) if self._rate else None
            line = self._lines[number] = Line(number, bucket=bucket)
        return line

    def _down(self, line: Line, e: ChannelDown, *, probe: bool) -> None:
        now = self._clock.now()
        if line.down is None:
            line.down = Down(e.cause, str(e), e.code, now)
            line.failed_probes = 0
            self._check_settled()
            self._metrics.pauses.inc(e.cause)
            log.warning(
                "number %s paused (%s: %s); its replies wait and a probe goes out every 30s "
                "at most",
                line.number,
                e.cause,
                e,
            )
            self._schedule_probe(line, e.retry_after)
        elif probe:
            line.probe = None
            line.failed_probes += 1
            line.down = Down(e.cause, str(e), e.code, line.down.since)
            self._metrics.probes.inc("failed")
            self._schedule_probe(line, e.retry_after)

    def _schedule_probe(
        self, line: Line, retry_after: float | None, *, at_once: bool = False
    ) -> None:
        if line.timer is not None:
            line.timer.cancel()
        delay = 0.0 if at_once else PROBE.delay(line.failed_probes + 1, self._rand(), retry_after)
        line.timer = self._clock.call_later(delay, partial(self._probe, line))

    def _probe(self, line: Line) -> None:
        """Send the head message of one held contact; its answer decides for the number."""
        line.timer = None
        if line.down is None or self._closing:
            return
        while line.held:
            contact = line.held.popleft()
            if self._queues.get(contact):
                line.probe = contact
                self._ready.put_nowait(contact)
                return
        # Nothing waits on this number: the next message it sends will tell.
        self._resume(line, probed=False)

    def _resume(self, line: Line, *, probed: bool = True) -> None:
        down = line.down
        if down is None:
            return
        now = self._clock.now()
        waiting = len(line.held) + (line.probe is not None)
        line.paused_total += now - down.since
        line.down = None
        self._check_settled()
        line.probe = None
        line.failed_probes = 0
        if line.timer is not None:
            line.timer.cancel()
            line.timer = None
        if probed:
            self._metrics.probes.inc("ok")
        log.info(
            "number %s resumed after %s paused (%s); %d contacts' replies go out again",
            line.number,
            _span(now - down.since),
            down.cause,
            waiting,
        )
        while line.held:
            self._ready.put_nowait(line.held.popleft())

    # --- recording ---------------------------------------------------------------------------

    async def _settle(
        self,
        ident: str,
        contact: str,
        *,
        provider_id: str | None = None,
        failed: int | None = None,
        title: str | None = None,
        instead: OutMessage | None = None,
    ) -> None:
        self._failures.pop(ident, None)
        self._marked.discard(ident)
        if provider_id is not None:
            op = Delivered(
                ident,
                "accepted",
                self._clock.now(),
                provider_id=provider_id,
                type=kind_of(instead) if instead else None,
                text=preview(instead) if instead else None,
            )
            self._metrics.outbound.inc("accepted", "")
        else:
            op = Delivered(ident, "failed", self._clock.now(), error_code=failed, error_title=title)
            self._metrics.outbound.inc("failed", str(failed or ""))
            log.warning("message %s to %s failed: %s", ident, mask(contact), title)
        try:
            # Ahead of a large batch of other writes: until this is durable, a crash would send
            # the message again.
            await retrying(lambda: self._committer.submit(op, urgent=True), self._clock)
        except StoreRejected as e:
            # Something the provider sent cannot be stored (the store says why): the outcome
            # is recorded without it, or the message would stay pending and go out again.
            log.error("outcome of %s recorded without the provider's details: %s", ident, e)
            bare = Delivered(ident, op.status, op.at, error_title="(not storable)")
            await retrying(lambda: self._committer.submit(bare, urgent=True), self._clock)


def _outgoing(item: Pending) -> Outgoing:
    ident, contact, number, payload, _born = item
    try:
        data = json.loads(payload)
        return Outgoing(
            id=ident,
            contact=contact,
            number=number,
            phone=data.get("phone"),
            user_id=data.get("user_id"),
            message=from_json(data["message"]),
            until=float(data.get("until") or 0.0),
            reply_to=data.get("reply_to"),
            flow=data.get("flow"),
            state=data.get("state"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PermanentDelivery(f"unreadable outbox payload: {e!r}", local=True) from e


def _closed(out: Outgoing, now: float) -> bool:
    """A free-form message whose window is known to have closed by now."""
    return not isinstance(out.message, TemplateMessage) and 0.0 < out.until <= now


def _span(seconds: float) -> str:
    """24h, 90m, 45s: a duration for a log line."""
    if seconds >= 7200:
        return f"{seconds / 3600:.0f}h"
    if seconds >= 120:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"
