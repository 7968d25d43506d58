"""The engine: one object that accepts events, runs conversations and sends replies.

    ingest(events) -> directory (who is this?) -> committer: journal + dedupe, one transaction
                   -> after the commit, in journal order: actors.tell(contact, Deliver)
    actor          -> flow step -> committer: snapshot + mark + transcript + outbox
                   -> delivery: provider API, in order per contact -> committer: result
    start()        -> replays what a crash left: unsent outbox first, then unhandled journal

`route` is the one place that maps an event to its actor, so moving contacts across processes
later changes one function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .actors import ActorSystem, Envelope
from .calls import Calls, Done
from .clock import SystemClock
from .committer import Committer
from .conversation import (
    AgentReply,
    ConversationBehaviour,
    Deliver,
    Fire,
    LateFallback,
    Notice,
    OptOut,
    Release,
)
from .delivery import Delivery
from .directory import Directory
from .due import DueRunner
from .errors import StoreRejected, StoreUnavailable
from .events import (
    Event,
    Message,
    OtherUpdate,
    ProviderErrors,
    StatusUpdate,
    System,
    decode,
    encode,
)
from .flows import Flows
from .flows.values import to_plain
from .metrics import Metrics
from .outbound import TemplateMessage
from .ports import (
    JSON,
    Accept,
    Accepted,
    Alias,
    Clock,
    ConversationRow,
    JournalEntry,
    MessageRow,
    RawWrite,
    Sender,
    StatusWrite,
    Store,
)
from .records import STATUS_RANK
from .timers import Scheduler

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0
RESUME_PAGE = 1000  # outbox rows and journal entries read at once when resuming
STORE_FAILURE_MEMORY = 10.0  # seconds a failed write keeps /readyz at 503 without a new failure
STORE_PROBE_EVERY = 1.0  # seconds between probes of a store that cannot write


@dataclass(frozen=True, slots=True)
class EngineConfig:
    handoff_ttl: float = 24 * 3600.0
    max_actors: int = 10_000
    send_concurrency: int = 32
    max_backlog: int = 50_000  # events and replies waiting in memory before intake says 503
    dedupe_ttl: float = 8 * 86400.0
    journal_retention: float = 86400.0
    send_max_age: float = 24 * 3600.0  # a reply not accepted by then is given up
    # After a restart, how long a send a crash left in flight waits for a status webhook that
    # says the provider has it, before it is sent again.
    send_reconcile: float = 10.0
    send_rate: int = 80  # sends a second per business number
    llm_daily_calls: int = 50  # a contact's model turns per UTC day; then the non-LLM path
    due_poll: float = 60.0  # seconds between looks for due records (invoice reminders)


class NotFound(Exception):
    pass


class Ambiguous(Exception):
    def __init__(self, keys: list[str]) -> None:
        super().__init__("several business numbers know this contact")
        self.numbers = sorted(k.split(":", 1)[0] for k in keys)


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        sender: Sender,
        flows: Flows,
        metrics: Metrics | None = None,
        config: EngineConfig | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.flows = flows
        self.metrics = metrics or Metrics()
        self.config = config or EngineConfig()
        self.clock = clock = clock or SystemClock()
        self.directory = Directory()
        self.committer = Committer(store, self.metrics, clock=clock)
        self.delivery = Delivery(
            sender,
            self.committer,
            self.metrics,
            clock=clock,
            concurrency=self.config.send_concurrency,
            max_age=self.config.send_max_age,
            on_opt_out=lambda contact, seconds, every: self.route(
                contact, OptOut(seconds, everything=every)
            ),
            on_fallback=lambda contact, ident, t: self.route(contact, LateFallback(ident, t)),
            reconcile=self.config.send_reconcile,
            rate=self.config.send_rate,
        )
        self.timers = Scheduler(
            store,
            clock,
            lambda timer: self.route(timer.contact, Fire(timer)),
            busy=lambda: self.overloaded,
        )
        self.calls = Calls(flows.actions, clock, self.metrics, self._call_ended)
        self.due = DueRunner(
            store,
            clock,
            lambda: self.flows.actions.due,
            self._notify_due,
            poll=self.config.due_poll,
            busy=lambda: self.overloaded,
        )
        # The store as actions and the admin API write records through it: the runner of due
        # records hears of a due time sooner than its next look.
        self.records = self.due.watched(store)
        behaviour = ConversationBehaviour(
            store=store,
            committer=self.committer,
            delivery=self.delivery,
            flows=flows,
            metrics=self.metrics,
            clock=clock,
            handoff_ttl=self.config.handoff_ttl,
            calls=self.calls,
            records=self.records,
            on_timers=self.timers.note,
            llm_daily_calls=self.config.llm_daily_calls,
        )
        self.actors = ActorSystem(behaviour, max_resident=self.config.max_actors)
        behaviour.system = self.actors
        self._behaviour = behaviour
        self.accepting = False
        self._pruner: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Event ids of webhooks whose write failed with the store unavailable: over a network
        # the transaction may have committed all the same (its answer lost), leaving events in
        # the journal that no actor was told of. Intake waits until they are looked up.
        self._doubts: set[str] = set()
        # Set when the store fails or a write is in doubt: the watch probes only then.
        self._trouble = asyncio.Event()
        self.committer.on_failure = self._trouble.set
        m = self.metrics
        m.resident.read = lambda: float(self.actors.resident)
        m.mailbox.read = lambda: float(self.actors.depth)
        m.outbox.read = lambda: float(self.delivery.pending)
        m.calls.read = lambda: float(self.calls.in_flight)
        m.timers_held.read = lambda: float(self.timers.held)
        m.machines.read = lambda: float(self.flows.live_instances)
        m.paused.read = lambda: {(p.number, p.cause): 1.0 for p in self.delivery.paused()}

    def reload(self, flows: Flows) -> None:
        """Swap in flows that loaded and validated: each conversation meets them at its next
        event (its state kept where the new version still has it, else its flow restarts,
        counted in snapshot_restarts_total); calls in flight finish under the old ones."""
        if flows.entry not in flows.by_name:
            raise ValueError(f"the entry flow {flows.entry!r} is not among the new flows")
        self.flows = flows
        self._behaviour.use(flows)
        self.calls.use(flows.actions)
        log.info("flows reloaded: %s", ", ".join(sorted(flows.by_name)))

    def _call_ended(self, contact: str, done: Done) -> None:
        self.actors.resume(contact, done)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load identities, then resume what a crash left: unsent replies, unhandled events."""
        self.directory.load(await self.store.aliases())
        self.committer.start()
        replies = events = 0
        after = 0
        while page := await self.store.outbox(after, RESUME_PAGE):  # in pages: no one read
            self.delivery.enqueue(page)  # holds a history's worth of rows
            replies += len(page)
            if page[-1].n <= after:
                break  # a store that does not number its rows: one page was all of it
            after = page[-1].n
        after = 0
        while entries := await self.store.unhandled(after, RESUME_PAGE):
            for seq, contact, data in entries:
                self._replay(seq, contact, data)
            events += len(entries)
            after = entries[-1][0]
        if replies or events:
            log.info("resuming: %d replies to send, %d events to handle", replies, events)
        # After the journal: a contact's replayed messages are in its mailbox before any timer
        # that fell due while the process was down.
        await self.timers.start()
        self.due.start()
        self.delivery.start()
        self._pruner = asyncio.create_task(self._prune_forever(), name="pruner")
        self._watcher = asyncio.create_task(self._watch_store(), name="store-watch")
        self.accepting = True
        self.delivery.open()  # the reconcile period of sends a crash left in flight starts now

    async def drain(self, seconds: float) -> bool:
        """Stop intake, finish mailboxes and the outbox within `seconds`; True when all that
        could be done is (replies held for a paused number wait in the store for the next
        start, and do not make a drain fail)."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            await asyncio.wait_for(self.actors.wait_idle(), max(0.0, deadline - loop.time() - 1.0))
            # Replies held for a paused number cannot drain: they stay in the outbox, on disk.
            await asyncio.wait_for(
                self.delivery.wait_settled(), max(0.0, deadline - loop.time() - 1.0)
            )
        except TimeoutError:
            return False
        return self.delivery.active == 0  # replies a paused number holds stay on disk

    async def close(self, grace: float = 1.0) -> None:
        self.accepting = False
        for task in (self._pruner, self._watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.timers.stop()
        await self.due.stop()
        await self.calls.stop()  # calls in flight stay recorded: made again after the restart
        await self.delivery.stop(grace)
        await self.actors.stop()
        await self.committer.close()

    async def store_ready(self) -> None:
        """Raise StoreUnavailable unless the store can write: the last write did not fail in
        the last STORE_FAILURE_MEMORY seconds, and a write of its own (the store's ping)
        succeeds. Older failures are left to the ping, so readiness recovers by itself when
        the store does, even with no traffic to prove it."""
        failure = self.committer.failure
        if failure is not None and self.clock.now() - failure.last < STORE_FAILURE_MEMORY:
            raise StoreUnavailable(failure.error)
        try:
            await self.store.ping()
        except Exception as e:
            # With no traffic, this probe is the only one to see an outage: say it and count it.
            self.committer.report(e)
            if isinstance(e, StoreUnavailable):
                raise
            raise StoreUnavailable(f"{type(e).__name__}: {e}") from e
        self.committer.recovered()

    # --- intake ----------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Work waiting in memory that should drain: events in mailboxes, writes waiting for
        the store (a slow or failing one), and replies for numbers that are sending. Replies
        held by a paused number have a bound of their own (`refuses`), so one number's outage
        does not close intake for the others."""
        return self.actors.depth + self.committer.waiting + self.delivery.active

    @property
    def overloaded(self) -> bool:
        """True while the backlog is over its bound: intake answers 503 until it drains."""
        return self.backlog > self.config.max_backlog

    def refuses(self, events: Sequence[Event]) -> bool:
        """True when `events` bring messages to a paused number that already holds more than
        MAX_BACKLOG replies: those wait at the provider (a 503 is retried) rather than here."""
        limit = self.config.max_backlog
        return any(
            isinstance(e, Message) and self.delivery.held_beyond(e.customer.number, limit)
            for e in events
        )

    def route(self, contact: str, item: Envelope) -> None:
        """The one place an event meets its actor."""
        self.actors.tell(contact, item)

    async def ingest(self, events: Sequence[Event]) -> Accepted:
        """Record `events` durably (duplicates dropped); raise StoreUnavailable if that fails.

        If the store refuses the write for what it holds, the events are recorded one by one and
        only those it still refuses are dropped (logged, counted as malformed)."""
        try:
            return await self._ingest(events)
        except StoreRejected as e:
            if len(events) == 1:
                self.metrics.malformed.inc()
                log.error("the store refuses an event (%s); dropped", e)
                return Accepted()
        log.error(
            "the store refuses part of a webhook; recording its %d events one by one", len(events)
        )
        parts = [await self.ingest([event]) for event in events]
        return Accepted(
            entries=[entry for p in parts for entry in p.entries],
            duplicate_messages=sum(p.duplicate_messages for p in parts),
            new_statuses=[s for p in parts for s in p.new_statuses],
            duplicate_statuses=sum(p.duplicate_statuses for p in parts),
        )

    async def _ingest(self, events: Sequence[Event]) -> Accepted:
        if self._doubts:
            # Until the writes that failed are looked up, a later message of the same contact
            # must not be handled ahead of one the store may hold.
            raise StoreUnavailable("looking up what the store committed before it failed")
        failure = self.committer.failure
        if (
            failure is not None
            and failure.unavailable
            and self.clock.now() - failure.last < STORE_FAILURE_MEMORY
        ):
            # The store timed out or went away moments ago: answer 503 now rather than make
            # each webhook wait out the store's timeout (Meta retries); one write is tried
            # again once the failure is STORE_FAILURE_MEMORY old, or readiness's probe passes.
            raise StoreUnavailable(failure.error)
        op, messages, new_contacts = self._prepare(events)
        # A status echoes the id we sent (biz_opaque_callback_data): after a crash it tells
        # delivery that a send left in doubt did reach the provider.
        claims = [
            (e.callback_data, e.id)
            for e in events
            if isinstance(e, StatusUpdate) and e.callback_data is not None
        ]

        def dispatch(result: Any) -> None:
            assert isinstance(result, Accepted)
            for ref, provider_id in claims:
                self.delivery.claim(ref, provider_id)
            for seq, entry in result.entries:
                fresh = entry.contact in new_contacts
                self.route(entry.contact, Deliver(seq, messages[entry.event_id], fresh=fresh))
            if result.duplicate_messages:
                self.metrics.duplicates.inc("message", by=result.duplicate_messages)
            if result.duplicate_statuses:
                self.metrics.duplicates.inc("status", by=result.duplicate_statuses)
            for s in result.new_statuses:
                self.metrics.statuses.inc(s.status)
                if s.status == "failed" and s.error_code is not None:
                    # The provider took the send, then failed it: the window had closed, or
                    # the customer stopped marketing messages, as if it had said so at once.
                    self.delivery.failed_later(s.provider_id, s.error_code)

        try:
            accepted = await self.committer.submit(op, then=dispatch)
        except StoreUnavailable:
            self.directory.forget(list(op.aliases))
            self._doubts.update(e.event_id for e in op.journal)
            self._trouble.set()
            raise
        except StoreRejected:
            self.directory.forget(list(op.aliases))
            raise
        self.directory.committed(list(op.aliases))
        assert accepted is not None
        return accepted

    def _prepare(self, events: Sequence[Event]) -> tuple[Accept, dict[str, Message], set[str]]:
        """One Accept for a webhook's events: contacts resolved, statuses ranked, the rest raw."""
        now = self.clock.now()
        journal: list[JournalEntry] = []
        statuses: list[StatusWrite] = []
        raw: list[RawWrite] = []
        links: list[Alias] = []
        messages: dict[str, Message] = {}
        new_contacts: set[str] = set()
        for event in events:
            if isinstance(event, Message):
                self.metrics.events.inc(f"message.{event.content.kind}")
                if event.id in messages:
                    self.metrics.duplicates.inc("message")
                    continue
                key, new_links, fresh = self.directory.resolve(event.customer)
                links.extend(new_links)
                if fresh:
                    new_contacts.add(key)
                if isinstance(event.content, System):  # a changed number or user id: same contact
                    for new_id in (event.content.new_phone, event.content.new_user_id):
                        link = (
                            self.directory.link(event.customer.number, new_id, key)
                            if new_id
                            else None
                        )
                        links.extend([link] if link else [])
                messages[event.id] = event
                journal.append(JournalEntry(key, event.id, encode(event), now))
            elif isinstance(event, StatusUpdate):
                self.metrics.events.inc(f"status.{event.status}")
                statuses.append(_status_write(event, now))
            elif isinstance(event, ProviderErrors):
                self.metrics.events.inc("errors")
                for e in event.errors:
                    self.metrics.provider_errors.inc(str(e.code))
                    log.warning(
                        "provider error on %s: %s %s (%s)", event.number, e.code, e.title, e.details
                    )
                raw.append(RawWrite("errors", [dataclasses.asdict(e) for e in event.errors], now))
            elif isinstance(event, OtherUpdate):
                self.metrics.events.inc(f"field.{event.field}")
                raw.append(RawWrite(f"field:{event.field}", event.value, now))
        return Accept(journal, statuses, raw, links), messages, new_contacts

    # --- the agent API ---------------------------------------------------------------------

    async def find(self, contact: str, number: str | None) -> str:
        """The key of the conversation a customer id names; NotFound or Ambiguous otherwise."""
        if number is not None:
            key = self.directory.lookup(number, contact)
            keys = [key] if key else []
        else:
            keys = await self.store.contacts(contact, None)
        if not keys:
            raise NotFound(contact)
        if len(set(keys)) > 1:
            raise Ambiguous(keys)
        if await self.store.conversation(keys[0]) is None:
            raise NotFound(contact)
        return keys[0]

    async def agent_reply(
        self, key: str, text: str | None, template: TemplateMessage | None = None
    ) -> Any:
        """A person's reply: text, an approved template, or text with a template to send
        instead when the 24-hour window has closed."""
        reply = asyncio.get_running_loop().create_future()
        return await self.actors.ask(key, AgentReply(uuid.uuid4().hex, text, reply, template))

    async def notify(
        self, key: str, ident: str, text: str | None, template: TemplateMessage | None = None
    ) -> Any:
        """A message to the contact from the business's side (an order's status, a receipt)
        that leaves the conversation where it is; `ident` names it, so asking twice sends once.
        Outside the 24-hour window the template goes, or it is recorded as not sent."""
        reply = asyncio.get_running_loop().create_future()
        return await self.actors.ask(key, Notice(ident, text, reply, template))

    def template(self, name: str, params: Mapping[str, str]) -> TemplateMessage | None:
        """templates.yaml's `name` filled with `params`; None (logged) when it is not declared
        or they do not fit it."""
        known = self.flows.templates.get(name)
        if known is None:
            log.warning(
                "no template %s in templates.yaml: outside the 24-hour window the"
                " message cannot go",
                name,
            )
            return None
        try:
            return known.fill(dict(params), None, [])
        except ValueError as e:
            log.warning("template %s does not fit: %s", name, e)
            return None

    async def _notify_due(
        self, key: str, ident: str, text: str, template: str | None, params: Mapping[str, str]
    ) -> None:
        await self.notify(key, ident, text, self.template(template, params) if template else None)

    async def release(self, key: str) -> Any:
        return await self.actors.ask(key, Release(asyncio.get_running_loop().create_future()))

    async def view(self, key: str, limit: int = 200) -> dict[str, Any]:
        row = await self.store.conversation(key)
        if row is None:
            raise NotFound(key)
        snap = row.snapshot
        messages = await self.store.transcript(key, limit)
        customer = snap.get("phone") or snap.get("user_id")
        return {
            "contact": customer,
            "key": key,
            "number": row.number,
            "user_id": snap.get("user_id"),
            "phone": snap.get("phone"),
            "name": snap.get("name"),
            "flow": row.flow,
            "state": row.state,
            "slots": {  # slots starting with _ are the engine's own (a list's page)
                k: to_plain(v) for k, v in (snap.get("slots") or {}).items() if k[:1] != "_"
            },
            "stack": [  # the flows that called this one, outermost first
                {"flow": f.get("flow"), "state": f.get("state")} for f in snap.get("stack") or ()
            ],
            "handoff": self._held(row, self.clock.now()),
            "handoff_until": iso(snap.get("handoff_until")),
            "last_activity": iso(row.updated_at),
            "messages": [
                {
                    "direction": m.direction,
                    "id": m.provider_id,
                    "ref": m.id,
                    "type": m.type,
                    "text": m.text,
                    "status": m.status,
                    "error": {"code": m.error_code, "title": m.error_title}
                    if m.error_code or m.error_title
                    else None,
                    "at": iso(m.at),
                    "model": _model_of(m),  # the model that wrote it, or null
                }
                for m in messages
            ],
        }

    async def listing(
        self, *, state: str | None, handoff: bool | None, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self.store.conversations(state=state, handoff=handoff, limit=limit)
        now = self.clock.now()
        out = []
        for row in rows:
            snap = row.snapshot
            held = self._held(row, now)
            if handoff is not None and held != handoff:
                continue  # the stored flag outlived its TTL
            out.append(
                {
                    "contact": snap.get("phone") or snap.get("user_id"),
                    "key": row.key,
                    "number": row.number,
                    "name": snap.get("name"),
                    "flow": row.flow,
                    "state": row.state,
                    "handoff": held,
                    "last_activity": iso(row.updated_at),
                }
            )
        return out

    @staticmethod
    def _held(row: ConversationRow, now: float) -> bool:
        """A person holds it: the stored flag, unless its HANDOFF_TTL has run out since."""
        return row.handoff and (row.snapshot.get("handoff_until") or 0) > now

    # --- housekeeping ----------------------------------------------------------------------

    async def prune(self) -> None:
        now = self.clock.now()
        pruned = await self.store.prune(
            dedupe_before=now - self.config.dedupe_ttl,
            journal_before=now - self.config.journal_retention,
        )
        counts = dataclasses.asdict(pruned)
        if any(counts.values()):
            log.info("pruned %s", counts)

    def _replay(self, seq: int, contact: str, data: JSON) -> bool:
        """Hand a journal entry to its contact's actor; False if it cannot be read."""
        try:
            message = decode(data)
        except (KeyError, TypeError, ValueError) as e:
            log.error("journal entry %d cannot be read (%s); skipped", seq, e)
            return False
        self.route(contact, Deliver(seq, message))
        return True

    async def _watch_store(self) -> None:
        """While the store cannot write, prove every STORE_PROBE_EVERY seconds whether it can
        (its ping, a write of its own): the first that passes opens intake again at once,
        rather than after the failure is STORE_FAILURE_MEMORY old. Then look up the events of
        the writes that failed (see `_doubts`). With nothing wrong it waits, rather than wake
        every second for nothing (a virtual clock's long jumps would stop at each)."""
        while True:
            if self.committer.failure is None and not self._doubts:
                self._trouble.clear()
                await self._trouble.wait()
            await self.clock.sleep(STORE_PROBE_EVERY)
            if self.committer.failure is not None:
                try:
                    await self.store.ping()
                except Exception:
                    continue  # still failing: the committer has said so once already
                self.committer.recovered()
            if self._doubts:
                try:
                    await self._settle_doubts()
                except Exception as e:
                    log.debug("cannot look up the failed writes yet (%s)", e)

    async def _settle_doubts(self) -> None:
        """Hand to their actors the events of failed writes that the store holds all the same,
        in journal order; the rest were not stored (Meta sends them again)."""
        doubts, found, after = set(self._doubts), 0, 0
        while entries := await self.store.unhandled(after, RESUME_PAGE):
            for seq, contact, data in entries:
                if isinstance(data, dict) and data.get("id") in doubts:
                    found += self._replay(seq, contact, data)
            after = entries[-1][0]
        self._doubts -= doubts
        log.log(
            logging.WARNING if found else logging.INFO,
            "%d of %d events whose write failed were stored all the same: handled now",
            found,
            len(doubts),
        )

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception as e:
                log.error("pruning failed: %s", e)
            await self.clock.sleep(PRUNE_EVERY)


def _error(code: int | None, title: str | None) -> dict[str, Any] | None:
    return {"code": code, "title": title} if code or title else None


def _status_write(event: StatusUpdate, now: float) -> StatusWrite:
    error = event.errors[0] if event.errors else None
    return StatusWrite(
        provider_id=event.id,
        status=event.status,
        rank=STATUS_RANK.get(event.status, 0),
        at=now,
        error_code=error.code if error else None,
        error_title=error.title if error else None,
    )


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO-8601 in UTC."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _model_of(m: MessageRow) -> str | None:
    """The model that wrote an outbound message (engine.conversation records it), or None."""
    if m.direction != "out" or not m.payload or '"model"' not in m.payload:
        return None
    try:
        model = json.loads(m.payload).get("model")
    except ValueError:
        return None
    return model if isinstance(model, str) else None
