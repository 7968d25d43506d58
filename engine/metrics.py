"""The engine's counters, gauges and histograms, kept as plain numbers.

The core cannot import a metrics library, and the per-message path should not pay for locks:
these are dict increments. An adapter (`adapters.prometheus`) reads them at scrape time.
"""

from __future__ import annotations

import bisect
import gc
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Labels = tuple[str, ...]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


_LABEL = re.compile(r"[^A-Za-z0-9_.:+-]")


@dataclass(slots=True)
class Counter:
    """A counter by label values. With a `limit` (for labels that come from what providers send:
    message kinds, status names, error codes) at most that many label sets are kept, each value
    reduced to a short run of safe characters, and anything beyond counts under "other": a sender
    of odd values can neither grow the process nor break the scrape."""

    name: str
    help: str
    labelnames: Labels = ()
    values: dict[Labels, float] = field(default_factory=dict)
    limit: int = 0

    def __post_init__(self) -> None:
        if not self.labelnames:  # exported as 0 from the start, so a first increase shows
            self.values.setdefault((), 0.0)

    def inc(self, *labels: str, by: float = 1.0) -> None:
        if self.limit and labels not in self.values:
            labels = self._admit(labels)
        self.values[labels] = self.values.get(labels, 0.0) + by

    def _admit(self, labels: Labels) -> Labels:
        clean = tuple(_LABEL.sub("_", value)[:64] for value in labels)
        if clean in self.values or len(self.values) < self.limit:
            return clean
        return ("other",) * len(labels)

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def total(self) -> float:
        return sum(self.values.values())


@dataclass(slots=True)
class Gauge:
    name: str
    help: str
    read: Callable[[], float] = lambda: 0.0


@dataclass(slots=True)
class LabeledGauge:
    """A gauge with labels, read at scrape time: `read()` maps label values to a value."""

    name: str
    help: str
    labelnames: Labels
    read: Callable[[], dict[Labels, float]] = dict


@dataclass(slots=True)
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0
    max: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1
        self.max = max(self.max, value)


class Metrics:
    """Every metric the engine keeps. Gauges read live values through functions set at wiring."""

    def __init__(self) -> None:
        self.webhook_requests = Counter(
            "engine_webhook_requests",
            "Webhook requests by provider and result",
            ("provider", "result"),
        )
        self.events = Counter(
            "engine_events", "Webhook items received, by type", ("type",), limit=200
        )
        self.duplicates = Counter(
            "engine_duplicate_events",
            "Items already accepted earlier (retries, re-batches)",
            ("type",),
            limit=50,
        )
        self.malformed = Counter("engine_malformed_items", "Webhook items that could not be read")
        self.handled = Counter(
            "engine_events_handled", "Events handled by actors, by outcome", ("outcome",)
        )
        self.handling = Histogram(
            "engine_event_handling_seconds", "Time to handle one event, commit included"
        )
        self.flow_errors = Counter(
            "engine_flow_errors", "Conversation steps that raised", ("flow",)
        )
        self.reprompts = Counter("engine_reprompts", "Re-prompts for unexpected input", ("flow",))
        self.fitted = Counter(
            "engine_text_fitted", "Run-time text that broke a WhatsApp limit", ("how",)
        )
        self.handoffs = Counter("engine_handoffs", "Conversations handed to a person", ("reason",))
        self.releases = Counter("engine_handoff_releases", "Conversations handed back", ("reason",))
        self.restarts = Counter(
            "engine_snapshot_restarts", "Conversations restarted because their flow changed"
        )
        self.outbound = Counter(
            "engine_outbound_messages",
            "Send attempts by result and error code",
            ("result", "code"),
            limit=300,
        )
        self.not_sent = Counter(
            "engine_messages_not_sent",
            "Messages recorded as not sent without asking the provider, by reason",
            ("reason",),
        )
        self.receipts = Counter(
            "engine_read_receipts", "Read receipts (and typing indicators) by result", ("result",)
        )
        self.rate_waits = Counter(
            "engine_send_rate_waits",
            "Sends that waited for their business number's throughput limit (SEND_RATE)",
        )
        self.reconciled = Counter(
            "engine_sends_reconciled",
            "Sends a crash left in flight, by outcome (claimed: a status webhook said the "
            "provider had it; resent: none did within SEND_RECONCILE)",
            ("outcome",),
        )
        self.opt_outs = Counter(
            "engine_opt_outs",
            "Customers the provider says stopped marketing messages (stopped: for good; paused: "
            "a per-user marketing limit for 24h)",
            ("kind",),
        )
        self.templates = Counter(
            "engine_template_messages",
            "Template messages queued, by why (flow: a flow or agent sent one; window: the "
            "fallback of a message outside the 24-hour window)",
            ("reason",),
        )
        self.timers = Counter(
            "engine_timers_fired",
            "Timers that fell due, by kind and outcome (fired, or void: the conversation moved on)",
            ("kind", "outcome"),
        )
        self.reloads = Counter(
            "engine_flow_reloads",
            "Flow reloads by result (ok, or invalid: the old flows stay)",
            ("result",),
        )
        self.actions = Counter(
            "engine_action_calls",
            "Action calls by action and outcome (done, or the error kind)",
            ("action", "outcome"),
            limit=500,
        )
        self.action_time = Histogram("engine_action_seconds", "Time of one action call")
        self.llm_requests = Counter(
            "engine_llm_requests",
            "Model calls by model and outcome (ok, timeout, connection, rate_limited, status,"
            " bad_body, bad_answer, error; skipped: its circuit was open)",
            ("model", "outcome"),
            limit=200,
        )
        self.llm_latency = Histogram(
            "engine_llm_latency_seconds", "Time of one model call that answered"
        )
        self.llm_tokens = Counter(
            "engine_llm_tokens",
            "Tokens used, by model and kind (prompt, completion)",
            ("model", "kind"),
        )
        self.llm_fallbacks = Counter(
            "engine_llm_fallbacks", "Times a turn moved on to the next model after one failed"
        )
        self.llm_cost = Counter(
            "engine_llm_cost", "Estimated cost in USD, from LLM_PRICES, by model", ("model",)
        )
        self.llm_budget = Counter(
            "engine_llm_budget_exhausted",
            "Turns that took the flow's non-LLM path because the contact's daily calls ran out",
        )
        self.pauses = Counter(
            "engine_channel_pauses",
            "Times a business number's sending was paused (outage, throttled, auth)",
            ("cause",),
        )
        self.probes = Counter(
            "engine_channel_probes", "Probes of a paused number, by result", ("result",)
        )
        self.paused = LabeledGauge(
            "engine_channel_paused",
            "1 while a business number's sending is paused, labelled with why",
            ("number", "cause"),
        )
        self.statuses = Counter(
            "engine_message_statuses", "Status webhooks applied", ("status",), limit=20
        )
        self.provider_errors = Counter(
            "engine_provider_errors", "Account-level error webhooks", ("code",), limit=100
        )
        self.commits = Counter("engine_store_commits", "Store transactions (group commits)")
        self.store_failures = Counter(
            "engine_store_write_failures",
            "Times the store stopped being able to write (each outage counted once)",
        )
        self.redis_failures = Counter(
            "engine_redis_failures",
            "Times Redis failed or lost entries (each starts a new epoch: nothing before is used)",
        )
        self.redis_reads = Counter(
            "engine_redis_snapshot_reads",
            "Snapshots of contacts not in memory, by where they came from (hit: Redis, miss: the "
            "store)",
            ("result",),
        )
        self.redis_acknowledged = Counter(
            "engine_redis_acknowledged",
            "Retried webhooks acknowledged from Redis's seen ids, without a store round trip",
        )
        self.committer_restarts = Counter(
            "engine_committer_restarts", "Times the commit task died and was started again"
        )
        self.commit_ops = Counter("engine_store_commit_ops", "Writes carried by those transactions")
        self.commit_time = Histogram("engine_store_commit_seconds", "Time of one group commit")
        self.gc_pause = Histogram("engine_gc_pause_seconds", "Garbage-collector pauses")
        self.resident = Gauge("engine_actors_resident", "Contact actors in memory")
        self.machines = Gauge("engine_machines_live", "Live python-statemachine instances")
        self.mailbox = Gauge("engine_mailbox_depth", "Events waiting in all mailboxes")
        self.outbox = Gauge("engine_outbox_pending", "Messages waiting to be sent")
        self.calls = Gauge("engine_actions_in_flight", "Action calls running now")
        self.timers_held = Gauge(
            "engine_timers_held", "Pending timers held in memory (a window of the soonest)"
        )

    def all(self) -> list[Counter | Gauge | LabeledGauge | Histogram]:
        return [
            v
            for v in vars(self).values()
            if isinstance(v, Counter | Gauge | LabeledGauge | Histogram)
        ]


class GcTimer:
    """Records every garbage-collector pause into a histogram (install once per process)."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.histogram.observe(time.perf_counter() - self._started)
            self._started = 0.0

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
