"""Ports: what the engine needs from storage and delivery, as Protocols.

Adapters satisfy them structurally. Writes reach the store only as batches of the three
operations below, each batch one transaction (see `engine.committer`):

- `Accept`: a webhook's events (journal entries, statuses, raw updates, new contact links);
  duplicates are dropped by provider id.
- `Commit`: one handled event: the conversation snapshot with its journal mark, the inbound
  message for the transcript, the replies (the outbox) and the contact's timers, together.
- `Sending`: one send is about to leave (recorded before it does, so that a restart knows
  which replies the provider may already have).
- `Delivered`: what the provider answered to one send.

Actions keep documents of their own (an order, an invoice) as `Record`s: `put_records` writes
several in one transaction, each only if nobody changed it since it was read (its `version`),
which is what lets an action that runs twice (a replay after a crash) change things once.

Time is a port too (`Clock`): the engine never reads the system clock or sleeps on its own, so
tests of retries, outages and expiry move time by hand instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .outbound import OutMessage

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Alias:
    """A customer id (user id or phone digits) on a business number, linked to a contact."""

    number: str
    alias: str
    key: str


@dataclass(frozen=True, slots=True)
class JournalEntry:
    contact: str
    event_id: str  # provider message id: the dedupe key
    event: JSON  # engine.events.encode(message)
    at: float


@dataclass(frozen=True, slots=True)
class StatusWrite:
    provider_id: str
    status: str
    rank: int
    at: float
    error_code: int | None = None
    error_title: str | None = None


@dataclass(frozen=True, slots=True)
class RawWrite:
    """An update kept as it came (other webhook fields, account errors)."""

    kind: str
    payload: Any
    at: float


@dataclass(frozen=True, slots=True)
class Accept:
    journal: Sequence[JournalEntry] = ()
    statuses: Sequence[StatusWrite] = ()
    raw: Sequence[RawWrite] = ()
    aliases: Sequence[Alias] = ()


@dataclass(frozen=True, slots=True)
class Accepted:
    """The journal entries that were new, with their sequence numbers, in journal order."""

    entries: list[tuple[int, JournalEntry]] = field(default_factory=list)
    duplicate_messages: int = 0
    new_statuses: list[StatusWrite] = field(default_factory=list)
    duplicate_statuses: int = 0


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One line of a transcript. Outbound rows still 'pending' are the outbox."""

    id: str  # inbound: provider id; outbound: our deterministic id
    contact: str
    direction: str  # in | out
    number: str
    type: str
    text: str
    status: str
    at: float
    provider_id: str | None = None
    payload: str | None = None  # outbound: JSON of the message and recipient, for the sender
    error_code: int | None = None
    error_title: str | None = None
    n: int = field(default=0, compare=False)  # the store's order of rows (outbox pages), read only
    # Outbox rows: when a send of it last left (None: never tried), read only.
    sending_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ConversationRow:
    key: str
    number: str
    flow: str
    state: str | None
    handoff: bool
    updated_at: float
    snapshot: JSON


@dataclass(frozen=True, slots=True)
class TimerWrite:
    """One of a contact's timers (one per kind): set to fire at `due`, or cleared (due None).
    It fires as an event that is void unless the conversation is still at `step`."""

    contact: str
    kind: str  # flow (a step's timeout or delay) | handoff (HANDOFF_TTL)
    due: float | None
    step: int = 0
    rung: int = 0

    @property
    def order(self) -> tuple[float, str, str]:
        """Timers are read and fired in this order."""
        assert self.due is not None
        return (self.due, self.contact, self.kind)


@dataclass(frozen=True, slots=True)
class Commit:
    conversation: ConversationRow
    messages: Sequence[MessageRow] = ()
    timers: Sequence[TimerWrite] = ()  # written in the same transaction as the snapshot


@dataclass(frozen=True, slots=True)
class Delivered:
    id: str
    status: str  # accepted | failed
    at: float
    provider_id: str | None = None
    error_code: int | None = None
    error_title: str | None = None
    # What went instead of the message as queued (its template, outside the window), for the
    # transcript; None: the message went as it was.
    type: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Sending:
    """A send of outbox row `id` leaves now: if the process dies before its outcome is
    recorded, the provider may have it."""

    id: str
    at: float


Op = Accept | Commit | Sending | Delivered


@dataclass(frozen=True, slots=True)
class Pruned:
    dedupe: int = 0
    journal: int = 0
    statuses: int = 0
    raw: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """A document an action keeps (an order, an invoice), by kind and key. `contact`, `status`
    and `due` are indexed; `data` is JSON. `version` counts the record's writes (0: never
    written), so a write can say which version it changes."""

    kind: str
    key: str
    data: JSON
    contact: str = ""
    status: str = ""
    due: float | None = None  # when the record next needs attention (a reminder), if ever
    at: float = 0.0  # when it was first written
    version: int = 0


class Records(Protocol):
    """Documents kept by actions, in the same store as the conversations."""

    async def record(self, kind: str, key: str) -> Record | None: ...

    async def records(
        self, kind: str, *, contact: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Record]:
        """The records of `kind` (of `contact`, in `status`), newest first (by `at`, then key)."""
        ...

    async def due_records(self, kind: str, before: float, limit: int) -> list[Record]:
        """Records of `kind` whose `due` is at or before `before`, soonest first."""
        ...

    async def put_records(self, records: Sequence[Record]) -> bool:
        """Write `records` in one transaction, each only if the stored one is still at its
        `version` (0: none may be stored). False, and nothing written, when one is not."""
        ...


class Store(Records, Protocol):
    """Durable state. Every `write` is one transaction: all of it is recorded, or none."""

    commits: int

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def write(self, ops: Sequence[Op]) -> list[Accepted | None]:
        """Apply `ops` in one transaction; one result per op (Accepted for Accept, else None)."""
        ...

    async def aliases(self) -> list[Alias]: ...

    async def conversation(self, key: str) -> ConversationRow | None: ...

    async def unhandled(self, after: int = 0, limit: int = 0) -> list[tuple[int, str, JSON]]:
        """Journal entries no snapshot covers yet, as (seq, contact, event), in journal order:
        those after seq `after`, at most `limit` of them (0: all)."""
        ...

    async def outbox(self, after: int = 0, limit: int = 0) -> list[MessageRow]:
        """Outbound messages not yet accepted by the provider, in the order they were made:
        those after row `after` (a row's `n`), at most `limit` of them (0: all), each with
        its `sending_at`."""
        ...

    async def transcript(self, key: str, limit: int) -> list[MessageRow]:
        """A conversation's last `limit` messages, oldest first."""
        ...

    async def conversations(
        self, *, state: str | None, handoff: bool | None, limit: int
    ) -> list[ConversationRow]: ...

    async def contacts(self, alias: str, number: str | None) -> list[str]:
        """Keys of the contacts known by `alias` (on `number` when given)."""
        ...

    async def timers(self, after: tuple[float, str, str] | None, limit: int) -> list[TimerWrite]:
        """Up to `limit` timers in (due, contact, kind) order, those after `after` if given."""
        ...

    async def prune(self, *, dedupe_before: float, journal_before: float) -> Pruned: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send, with everything the sender needs."""

    id: str
    contact: str
    number: str  # the business number it leaves from
    phone: str | None  # digits, no '+'
    user_id: str | None
    message: OutMessage
    until: float = 0.0  # when the customer's 24-hour window closes (0: unknown)
    reply_to: str | None = None  # the customer's message it quotes (a contextual reply)
    flow: str | None = None  # the flow and step that produced it, for the logs
    state: str | None = None


class Sender(Protocol):
    async def send(self, out: Outgoing) -> str:
        """Send and return the provider's message id; raise DeliveryError subclasses on failure."""
        ...

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        """Mark a customer's message read on `number` (and show the typing indicator)."""
        ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall-clock time, and waiting for it to pass."""

    def now(self) -> float:
        """Unix seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer: ...
