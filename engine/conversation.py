"""What a contact's actor does with each message in its mailbox.

For a customer message: activate the conversation (from its snapshot, migrating it if its flow
changed), decide whether the bot speaks (not for reactions, system notices, edits, deletions, nor
while a person holds the conversation), step the flow, then commit the snapshot, the journal
mark, the transcript line and the replies in one write, and hand the replies to delivery.

A step that raises never stops the actor: the conversation gets an apology and a fresh start of
its flow; if that fails again it goes to a person, who sees it in the handoff list.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .actions import ActionContext
from .actors import Actor, ActorSystem
from .calls import Calls, Done
from .committer import Committer, retrying
from .delivery import Delivery
from .events import Message, System, scrub
from .flows import KEEP, ActionRequest, Effects, Flow, Flows, values
from .flows.stack import settle
from .logs import mask
from .metrics import Metrics
from .outbound import (
    OUTSIDE_WINDOW,
    WINDOW,
    OutMessage,
    TemplateMessage,
    TextMessage,
    fit,
    kind_of,
    preview,
    refit,
    to_json,
)
from .ports import Clock, Commit, ConversationRow, MessageRow, Records, Store, TimerWrite
from .records import Conversation

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on our side. Let's start again."
HANDOFF_APOLOGY = "Sorry, something went wrong on our side. A member of our team will reply here."
CALL_GRACE = 5.0  # seconds past an action's within: before its timer treats the call as lost
LLM_ACTIONS = ("llm.answer", "llm.classify", "llm.extract")  # a model's turns (engine.llm)
MIN_TURN = 2.5  # seconds: less left of a turn than this, and its next model call is skipped


@dataclass(slots=True)
class Deliver:
    """A journaled customer message for the contact's flow."""

    seq: int
    message: Message
    reply: asyncio.Future[Any] | None = None
    fresh: bool = False  # the directory met this contact just now: nothing is stored for it


@dataclass(slots=True)
class AgentReply:
    """A person's reply from the agent API; it puts the conversation in their hands."""

    request_id: str
    text: str | None
    reply: asyncio.Future[Any] | None = field(default=None)
    template: TemplateMessage | None = None  # sent alone, or as the text's fallback


@dataclass(slots=True)
class Notice:
    """A message from the business's side that does not take the conversation from the bot
    (an order's new status, a receipt): `ident` makes it once, however often it is asked for."""

    ident: str
    text: str | None
    reply: asyncio.Future[Any] | None = field(default=None)
    template: TemplateMessage | None = None  # sent alone, or as the text's fallback


@dataclass(slots=True)
class Release:
    """Hand the conversation back to the bot."""

    reply: asyncio.Future[Any] | None = field(default=None)


@dataclass(slots=True)
class OptOut:
    """The provider says the customer stopped marketing messages: for good (`seconds` None),
    or for a while (a per-user marketing limit)."""

    seconds: float | None
    reply: asyncio.Future[Any] | None = None
    everything: bool = False  # not only marketing: the customer replied STOP (Twilio 21610)


@dataclass(slots=True)
class LateFallback:
    """A send the provider accepted failed later outside the 24-hour window: its template goes
    now, as a message of its own (its id derived from the one that failed)."""

    ident: str
    template: TemplateMessage
    reply: asyncio.Future[Any] | None = None


@dataclass(slots=True)
class Fire:
    """One of the contact's timers fell due (see engine.timers)."""

    timer: TimerWrite
    reply: asyncio.Future[Any] | None = None


class ConversationBehaviour:
    def __init__(
        self,
        *,
        store: Store,
        committer: Committer,
        delivery: Delivery,
        flows: Flows,
        metrics: Metrics,
        clock: Clock,
        handoff_ttl: float,
        calls: Calls | None = None,
        records: Records | None = None,  # what actions keep records in (default: the store)
        on_timers: Callable[[list[TimerWrite]], None] = lambda writes: None,
        llm_daily_calls: int = 50,
    ) -> None:
        self._records = records if records is not None else store
        self._on_timers = on_timers
        self._llm_daily = llm_daily_calls
        self._calls = calls
        self.system: ActorSystem | None = None  # set by the system that runs this behaviour
        self._store = store
        self._committer = committer
        self._delivery = delivery
        self._flows = flows
        self._metrics = metrics
        self._clock = clock
        self._ttl = handoff_ttl

    def use(self, flows: Flows) -> None:
        """New flows for every conversation's next event (a reload): a conversation whose step
        still exists carries on there; one whose step is gone starts its flow again."""
        self._flows = flows

    async def receive(self, actor: Actor, message: Any) -> None:
        try:
            if isinstance(message, Done):
                await self._done(actor, message)
            elif isinstance(message, OptOut):
                await self._opt_out(actor, message)
            elif isinstance(message, LateFallback):
                await self._late_fallback(actor, message)
            elif not await self._lost_call(actor, message):
                await self._handle(actor, message)
        except Exception as e:
            await self._failed(actor, message, e)

    async def _handle(self, actor: Actor, message: Any) -> None:
        if isinstance(message, Deliver):
            await self._deliver(actor, message)
        elif isinstance(message, AgentReply):
            await self._agent_reply(actor, message)
        elif isinstance(message, Notice):
            await self._notice(actor, message)
        elif isinstance(message, Release):
            await self._release(actor, message)
        elif isinstance(message, Fire):
            await self._fire(actor, message)
        else:
            raise TypeError(f"unexpected mailbox message {message!r}")

    async def _failed(self, actor: Actor, message: Any, error: Exception) -> None:
        """A message could not be handled (a rejected write, a bug outside the flow step)."""
        if isinstance(message, Deliver):
            await self._record_failure(actor, message, error)
            return
        actor.state = None  # memory may hold what was never stored: the snapshot is the truth
        if isinstance(message, Fire):  # the timer row remains
            log.error("a timer of %s could not be handled", mask(actor.key), exc_info=error)
        elif isinstance(message, Done):  # the snapshot still records the call: made again
            log.error(
                "the end of a call of %s could not be handled", mask(actor.key), exc_info=error
            )
        else:
            raise error

    # --- customer messages -----------------------------------------------------------------

    async def _deliver(self, actor: Actor, item: Deliver) -> None:
        started = time.perf_counter()
        message = item.message
        convo = await self._activate(actor, message, stored=not item.fresh)
        if item.seq <= convo.last_seq:
            return  # already covered by the snapshot (a replay overlapping live traffic)
        now = self._clock.now()
        self._learn_identity(convo, message)
        effects = Effects(timer=KEEP)
        timers: list[TimerWrite] = []
        if not message.answerable:
            outcome = "silent"
        elif convo.held(now):
            outcome = "held"
        else:
            if convo.handoff_until is not None:  # the person's time ran out: the bot takes over
                timers += self._hand_back(convo, "expired")
            read = self._flow_of(convo).spec.read
            if read is not None:  # blue ticks (and "typing...") ahead of the replies
                self._delivery.receipt(convo.key, convo.number, message.id, typing=read == "typing")
            convo.llm_turn_at = None  # a new turn: the customer waits for this message
            effects = self._step(convo, lambda flow: self._run(flow, convo, message), now)
            outcome = "answered"
        if message.answerable:
            convo.last_in_at = now
            convo.stopped = False  # they wrote: maybe START; a refusal would say so again
        convo.last_seq = item.seq
        timers += self._timers(convo, effects, now)
        replies = self._outbound(
            convo,
            f"r:{message.id}",
            effects.messages,
            now,
            quoting=(message.id, effects.quotes),
            models=effects.models,
        )
        rows = [_inbound(convo, message, "received"), *replies]
        await self._finish(actor, convo, effects, rows=rows, now=now, timers=timers)
        self._metrics.handled.inc(outcome)
        self._metrics.handling.observe(time.perf_counter() - started)

    async def _record_failure(self, actor: Actor, item: Deliver, error: Exception) -> None:
        """The event could not be handled. Forget what memory holds (the stored snapshot is the
        truth), then record the message as failed and move the journal mark past it, so it is
        visible in the transcript instead of lost silently."""
        log.error(
            "message %s for %s could not be handled: %r",
            item.message.id,
            mask(actor.key),
            error,
            exc_info=error,
        )
        self._metrics.handled.inc("failed")
        actor.state = None
        try:
            convo = await self._activate(actor, item.message)
            if item.seq > convo.last_seq:
                convo.last_seq = item.seq
                await self._commit(
                    convo, [_inbound(convo, item.message, "failed")], self._clock.now()
                )
        except Exception:
            log.exception("could not record the failure of %s either", item.message.id)
            actor.state = None

    def _learn_identity(self, convo: Conversation, message: Message) -> None:
        customer = message.customer
        convo.name = customer.name or convo.name
        convo.user_id = customer.user_id or convo.user_id
        convo.phone = customer.phone or convo.phone
        content = message.content
        if isinstance(content, System) and content.new_phone:
            convo.phone = content.new_phone
        if isinstance(content, System) and content.new_user_id:
            convo.user_id = content.new_user_id

    def _run(self, flow: Flow, convo: Conversation, message: Message) -> Effects:
        """The message for the step the conversation is at; after an end, the entry flow
        starts again (a conversation may have jumped to another flow on the way)."""
        if not flow.ends(convo.state):
            return flow.handle(convo, message)
        entry = self._flows.entry_flow
        convo.flow, convo.flow_version, convo.stack = entry.name, entry.version, []
        return entry.start(convo)

    def _step(self, convo: Conversation, run: Callable[[Flow], Effects], now: float) -> Effects:
        """Run one event through the conversation's flow; a step that raises is recovered from
        (apology and a fresh start, then a person) and never escapes."""
        flow = self._flow_of(convo)
        before = (
            convo.flow,
            convo.flow_version,
            convo.state,
            dict(convo.slots),
            convo.misses,
            list(convo.stack),
        )
        convo.step += 1
        convo.llm_block = self._llm_block(convo, now)
        try:
            effects = settle(run(flow), convo, self._flows.get, self._flows.entry_flow)
            convo.failures = 0
        except Exception:
            (convo.flow, convo.flow_version, convo.state, convo.slots, convo.misses) = before[:5]
            convo.stack = before[5]
            self._metrics.flow_errors.inc(flow.name)
            convo.failures += 1
            log.exception(
                "flow %s failed in state %r for %s (failure %d in a row)",
                flow.name,
                convo.state,
                mask(convo.key),
                convo.failures,
            )
            effects = self._recover(convo, flow)
        self._account(flow, effects)
        if effects.llm_skipped == "budget":
            self._metrics.llm_budget.inc()
        if effects.handoff:
            convo.handoff_until = now + self._ttl
            self._metrics.handoffs.inc("error" if convo.failures else "flow")
        return effects

    def _llm_block(self, convo: Conversation, now: float) -> str | None:
        """Why a model cannot be asked at this step ("unavailable": none is configured;
        "budget": the contact's calls for the UTC day are spent), or None."""
        calls = self._calls
        if calls is None or not any(calls.available(n) for n in LLM_ACTIONS):
            return "unavailable"
        today = convo.llm_calls if convo.llm_day == _utc_day(now) else 0
        if today >= self._llm_daily:
            return "budget"
        if convo.llm_turn_at is not None and self._turn_left(convo, now) < MIN_TURN:
            return "timeout"  # an earlier call of this turn used its time
        return None

    def _turn_left(self, convo: Conversation, now: float) -> float:
        """What is left of the turn a model's first call began: the calls of one customer
        message (understood, then answered) share one LLM_TIMEOUT_S."""
        assert self._calls is not None and convo.llm_turn_at is not None
        whole = self._calls.within_of("llm.answer") or 0.0
        return whole - (now - convo.llm_turn_at)

    # --- timers ----------------------------------------------------------------------------

    def _timers(self, convo: Conversation, effects: Effects, now: float) -> list[TimerWrite]:
        """The contact's timer rows after a step, written with its snapshot."""
        writes: list[TimerWrite] = []
        plan = effects.timer
        if plan is KEEP:
            if convo.timer_due is not None:  # the same due time, valid at the new step
                writes.append(
                    TimerWrite(convo.key, "flow", convo.timer_due, convo.step, convo.timer_rung)
                )
        elif plan is None:
            if convo.timer_due is not None:
                writes.append(TimerWrite(convo.key, "flow", None))
                convo.timer_due = None
        else:
            convo.timer_due, convo.timer_rung = now + plan.delay, plan.rung
            writes.append(TimerWrite(convo.key, "flow", convo.timer_due, convo.step, plan.rung))
        if effects.handoff and convo.handoff_until is not None:
            writes.append(TimerWrite(convo.key, "handoff", convo.handoff_until, convo.step))
        return writes

    def _hand_back(self, convo: Conversation, reason: str) -> list[TimerWrite]:
        """The bot takes the conversation back; the next customer message starts the flow."""
        convo.handoff_until = None
        convo.state = None
        if convo.stack:  # a person took over inside a called flow: start from the outermost
            convo.flow = convo.stack[0]["flow"]
            convo.stack = []
        self._metrics.releases.inc(reason)
        return [TimerWrite(convo.key, "handoff", None)]

    async def _fire(self, actor: Actor, item: Fire) -> None:
        timer = item.timer
        convo = await self._activate(actor, None)
        now = self._clock.now()
        if timer.kind == "action":  # its call ended, or was made again, since it was set
            self._metrics.timers.inc("action", "void")
            return
        if timer.kind == "handoff":
            if convo.handoff_until is None or convo.handoff_until != timer.due:
                self._metrics.timers.inc("handoff", "void")
                return  # released, or a person answered since: the row was replaced then
            self._metrics.timers.inc("handoff", "fired")
            timers = self._hand_back(convo, "expired")
            convo.step += 1
            flow = self._flow_of(convo)
            effects = flow.handback(convo)
            timers += self._timers(convo, Effects(), now)
            log.info("hand-off of %s ran out; the bot has it again", mask(convo.key))
        else:
            flow = self._flow_of(convo)
            if (
                convo.step != timer.step
                or convo.held(now)
                or not flow.times_out(convo.state, timer.rung)
            ):
                self._metrics.timers.inc(timer.kind, "void")
                if convo.timer_due is not None and convo.step == timer.step:
                    # The flow changed under the timer: its step no longer waits for it.
                    convo.timer_due = None
                    await self._commit(convo, [], now, [TimerWrite(convo.key, timer.kind, None)])
                return
            self._metrics.timers.inc(timer.kind, "fired")
            convo.timer_due = None
            convo.llm_turn_at = None
            effects = self._step(convo, lambda f: f.timeout(convo, timer.rung), now)
            timers = self._timers(convo, effects, now)
            if convo.timer_due is None:
                timers.append(TimerWrite(convo.key, "flow", None))
        replies = self._outbound(
            convo, f"t:{convo.key}:{convo.step}", effects.messages, now, models=effects.models
        )
        await self._finish(actor, convo, effects, rows=replies, now=now, timers=timers)

    # --- actions -------------------------------------------------------------------------

    async def _finish(
        self,
        actor: Actor,
        convo: Conversation,
        effects: Effects,
        *,
        rows: list[MessageRow],
        now: float,
        timers: list[TimerWrite],
    ) -> None:
        """Commit a step; if it entered an action, record the call with it, then make it."""
        if effects.action is not None:
            timers.append(self._record_call(convo, effects.action, now))
        await self._commit(convo, rows, now, timers)
        if effects.action is not None:
            self._begin(actor, convo)

    def _record_call(self, convo: Conversation, request: ActionRequest, now: float) -> TimerWrite:
        """The call goes into the snapshot before it is made; its key is derived from the step
        that makes it, so a replay of that step after a crash makes it with the same key."""
        cause = f"{convo.key}:{convo.flow}:{convo.state}:{convo.step}"
        within = request.within
        if self._calls is not None:  # a model's turn bounds its own time (LLM_TIMEOUT_S)
            within = self._calls.within_of(request.name) or within
        if request.name.startswith("llm."):  # one of the contact's model turns for the day
            if convo.llm_turn_at is None:
                convo.llm_turn_at = now
            else:  # a second call for the same message: what the first one left
                within = max(self._turn_left(convo, now), MIN_TURN)
            day = _utc_day(now)
            if convo.llm_day != day:
                convo.llm_day, convo.llm_calls = day, 0
            convo.llm_calls += 1
        convo.action = {
            "key": hashlib.sha256(cause.encode()).hexdigest()[:32],
            "name": request.name,
            "args": values.to_json(request.args),
            "within": within,
            "attempt": 1,
            "step": convo.step,
        }
        return TimerWrite(convo.key, "action", now + within + CALL_GRACE, convo.step)

    def _begin(self, actor: Actor, convo: Conversation) -> None:
        """Make the recorded call outside the actor's run slot: the actor is suspended (its
        later mail waits, in order) until the call's Done arrives."""
        call = convo.action
        assert call is not None and self.system is not None
        if self._calls is None:
            raise RuntimeError("this engine runs no actions")
        within = float(call["within"])
        ctx = ActionContext(
            key=call["key"],
            contact=convo.key,
            flow=convo.flow,
            state=convo.state or "",
            deadline=self._clock.now() + within,
            attempt=int(call["attempt"]),
            now=self._clock.now(),
            records=self._records,
        )
        args = values.from_json(call["args"])
        assert isinstance(args, dict)
        self.system.suspend(actor)
        self._calls.start(ctx, call["name"], args, within)

    async def _lost_call(self, actor: Actor, message: Any) -> bool:
        """Before anything else reaches a conversation whose recorded call is not in flight (a
        crash or restart lost it), make the call again and let `message` wait behind it.
        True when `message` was put back to wait."""
        convo: Conversation | None = actor.state
        if convo is None:
            if isinstance(message, Deliver) and message.fresh:
                return False
            convo = await self._activate(
                actor, message.message if isinstance(message, Deliver) else None
            )
        call = convo.action
        if call is None:
            return False
        assert self.system is not None
        now = self._clock.now()
        flow = self._flow_of(convo)
        if not flow.awaits(convo.state, str(call.get("name"))):  # the flow changed since
            log.info(
                "%s: a recorded call of %s is void (its flow changed)",
                mask(convo.key),
                call.get("name"),
            )
            convo.action = None
            await self._commit(convo, [], now, [TimerWrite(convo.key, "action", None)])
            return False
        if isinstance(message, Fire) and message.timer.kind == "action":
            self._metrics.timers.inc("action", "fired")
        call["attempt"] = int(call.get("attempt") or 1) + 1
        within = float(call["within"])
        timer = TimerWrite(convo.key, "action", now + within + CALL_GRACE, convo.step)
        await self._commit(convo, [], now, [timer])
        log.info(
            "%s: action %s is made again (attempt %d)",
            mask(convo.key),
            call["name"],
            call["attempt"],
        )
        self.system.requeue(actor, message)
        self._begin(actor, convo)
        return True

    async def _done(self, actor: Actor, item: Done) -> None:
        """The call ended: save its result and take on_done:, or on_error: with its error."""
        convo = await self._activate(actor, None)
        now = self._clock.now()
        call = convo.action
        if call is None or call.get("key") != item.key:
            return  # a call made again after a restart ended twice; the first end counted
        convo.action = None
        timers = [TimerWrite(convo.key, "action", None)]
        flow = self._flow_of(convo)
        if not flow.awaits(convo.state, str(call.get("name"))):  # the flow changed meanwhile
            await self._commit(convo, [], now, timers)
            return
        outcome = item.outcome
        args = values.from_json(call.get("args") or {})
        asked = args if isinstance(args, dict) else {}
        if outcome.ok:
            effects = self._step(convo, lambda f: f.done(convo, outcome.result, asked), now)
        else:
            kind = outcome.kind or "error"
            effects = self._step(
                convo, lambda f: f.failed(convo, kind, outcome.message, asked), now
            )
        timers += self._timers(convo, effects, now)
        replies = self._outbound(
            convo, f"x:{item.key}", effects.messages, now, models=effects.models
        )
        await self._finish(actor, convo, effects, rows=replies, now=now, timers=timers)

    def _recover(self, convo: Conversation, flow: Flow) -> Effects:
        """Apology and a fresh start (of the outermost flow, when the step was in a called one);
        if the flow fails again, a person takes over."""
        if convo.stack:
            flow = self._flows.get(convo.stack[0]["flow"]) or self._flows.entry_flow
            convo.flow, convo.flow_version, convo.stack = flow.name, flow.version, []
        if convo.failures < 2:
            try:
                fresh = settle(flow.start(convo), convo, self._flows.get, self._flows.entry_flow)
                fresh.messages.insert(0, TextMessage(APOLOGY))
                return fresh
            except Exception:
                log.exception("flow %s cannot even start for %s", flow.name, mask(convo.key))
        convo.state = None
        return Effects(messages=[TextMessage(HANDOFF_APOLOGY)], handoff=True)

    def _account(self, flow: Flow, effects: Effects) -> None:
        if effects.reprompts:
            self._metrics.reprompts.inc(flow.name, by=effects.reprompts)
        if effects.split:
            self._metrics.fitted.inc("split", by=effects.split)
        if effects.shortened:
            self._metrics.fitted.inc("shortened", by=effects.shortened)
        if effects.split or effects.shortened:
            log.info(
                "flow %s: run-time text broke a WhatsApp limit (%d split, %d shortened)",
                flow.name,
                effects.split,
                effects.shortened,
            )

    # --- the agent API ---------------------------------------------------------------------

    async def _agent_reply(self, actor: Actor, item: AgentReply) -> None:
        convo = await self._activate(actor, None)
        now = self._clock.now()
        if not convo.held(now):
            self._metrics.handoffs.inc("agent")
        # A person who is answering keeps the conversation for another full HANDOFF_TTL.
        convo.handoff_until = now + self._ttl
        timers = [TimerWrite(convo.key, "handoff", convo.handoff_until, convo.step)]
        if convo.timer_due is not None:  # the bot's own reminders stop while a person answers
            convo.timer_due = None
            timers.append(TimerWrite(convo.key, "flow", None))
        if item.text is None:
            assert item.template is not None
            messages: list[OutMessage] = [item.template]
        else:
            messages = fit(TextMessage(item.text, item.template)).messages
        rows = self._outbound(convo, f"a:{item.request_id}", messages, now)
        await self._commit(convo, rows, now, timers)
        _answer(
            item.reply,
            {
                "ids": [r.id for r in rows],
                "handoff": True,
                "messages": [
                    {"id": r.id, "type": r.type, "status": r.status, "error": r.error_title}
                    for r in rows
                ],
            },
        )

    async def _notice(self, actor: Actor, item: Notice) -> None:
        convo = await self._activate(actor, None)
        now = self._clock.now()
        messages: list[OutMessage]
        if item.text is None:
            assert item.template is not None
            messages = [item.template]
        else:
            messages = fit(TextMessage(item.text, item.template)).messages
        rows = self._outbound(convo, f"n:{item.ident}", messages, now)
        await self._commit(convo, rows, now)
        _answer(item.reply, {"ids": [r.id for r in rows], "types": [r.type for r in rows]})

    async def _opt_out(self, actor: Actor, item: OptOut) -> None:
        convo = await self._activate(actor, None)
        now = self._clock.now()
        if item.everything:
            convo.stopped = True
        if item.seconds is None:
            convo.opted_out = True
        else:
            convo.marketing_paused_until = max(
                convo.marketing_paused_until or 0.0, now + item.seconds
            )
        self._metrics.opt_outs.inc("stopped" if item.seconds is None else "paused")
        if item.everything:
            log.info("%s replied STOP; nothing is sent until they write again", mask(convo.key))
        else:
            log.info(
                "%s does not take marketing messages%s; marketing templates to them are not sent",
                mask(convo.key),
                "" if item.seconds is None else f" for {item.seconds / 3600:.0f}h",
            )
        await self._commit(convo, [], now)
        _answer(item.reply, None)

    async def _late_fallback(self, actor: Actor, item: LateFallback) -> None:
        convo = await self._activate(actor, None)
        now = self._clock.now()
        rows = self._outbound(convo, f"{item.ident}:late", [item.template], now)
        # Delivery forgets the failed send once it asked for this: a second report of the
        # same failure makes no second template.
        await self._commit(convo, rows, now)
        _answer(item.reply, [r.id for r in rows])

    async def _release(self, actor: Actor, item: Release) -> None:
        convo = await self._activate(actor, None)
        now = self._clock.now()
        if convo.handoff_until is not None:
            timers = self._hand_back(convo, "agent")  # the next message starts the flow afresh
            await self._commit(convo, [], now, timers)
        _answer(item.reply, {"handoff": False})

    # --- activation, commit ----------------------------------------------------------------

    async def _activate(
        self, actor: Actor, message: Message | None, stored: bool = True
    ) -> Conversation:
        convo: Conversation | None = actor.state
        if convo is not None:
            return convo
        row = (
            await retrying(lambda: self._store.conversation(actor.key), self._clock)
            if stored
            else None
        )
        if row is not None:
            try:
                convo = Conversation.from_snapshot(actor.key, row.snapshot)
            except (ValueError, KeyError, TypeError) as e:
                log.error("unreadable snapshot for %s (%s); starting afresh", mask(actor.key), e)
        if convo is None:
            number = message.customer.number if message else actor.key.split(":", 1)[0]
            entry = self._flows.entry_flow
            convo = Conversation(
                key=actor.key, number=number, flow=entry.name, flow_version=entry.version
            )
        self._flow_of(convo)
        actor.state = convo
        return convo

    def _flow_of(self, convo: Conversation) -> Flow:
        """The conversation's flow; a removed or changed flow is handled deliberately here."""
        flow = self._flows.get(convo.flow)
        if flow is None:
            log.warning(
                "flow %r is gone; %s restarts in %s", convo.flow, mask(convo.key), self._flows.entry
            )
            flow = self._flows.entry_flow
            convo.flow, convo.flow_version, convo.state = flow.name, flow.version, None
            self._metrics.restarts.inc()
        elif convo.flow_version != flow.version:
            if convo.state is not None and not flow.has_state(convo.state):
                log.info(
                    "flow %s changed and has no state %r; %s restarts",
                    flow.name,
                    convo.state,
                    mask(convo.key),
                )
                convo.state = None
                self._metrics.restarts.inc()
            convo.flow_version = flow.version
        return flow

    def _outbound(
        self,
        convo: Conversation,
        cause: str,
        messages: list[OutMessage],
        now: float,
        *,
        quoting: tuple[str, set[int]] | None = None,
        models: dict[int, str] | None = None,
    ) -> list[MessageRow]:
        """Outbox rows with ids derived from their cause, so a replay cannot send them twice.

        Outside WhatsApp's 24-hour window (a reminder after a long silence, the bot's message
        when a hand-off runs out) a free-form message would be refused (131047): its template
        fallback goes instead (once for the pieces of one long text), and one without a fallback
        is recorded as not sent, with the reason, instead of being sent to fail."""
        # Twilio's shorter bodies; each piece keeps the index of the message it came from.
        pieces = [(n, piece) for n, m in enumerate(messages) for piece in refit([m], convo.number)]
        closed = convo.last_in_at is None or now - convo.last_in_at >= WINDOW
        until = convo.last_in_at + WINDOW if convo.last_in_at is not None else 0.0
        rows = []
        last: TemplateMessage | None = None
        unsent = 0
        for i, (n, message) in enumerate(pieces):
            said = message
            if (
                not isinstance(message, TemplateMessage)
                and message.fallback is not None
                and _opted_out(convo, message.fallback, now)
            ):
                said = replace(message, fallback=None)  # no marketing fallback for them
            m, failed = said, None
            if convo.stopped:  # they replied STOP: nothing goes until they write again
                self._metrics.not_sent.inc("stop")
                rows.append(
                    _row(convo, f"{cause}:{i}", m, now, failed=STOPPED, until=until, quote=None)
                )
                continue
            if closed and not isinstance(said, TemplateMessage):
                if said.fallback is None:
                    failed = OUTSIDE_WINDOW
                    unsent += 1
                elif said.fallback is last:
                    continue  # a later piece of the same text: its template has gone already
                else:
                    m = last = said.fallback
            if isinstance(m, TemplateMessage):
                failed = _opted_out(convo, m, now)
                if failed:
                    self._metrics.not_sent.inc("opt_out")
                    log.info("template %s to %s not sent: %s", m.name, mask(convo.key), failed)
                else:
                    self._metrics.templates.inc("window" if closed else "flow")
            quote = quoting[0] if quoting and n in quoting[1] else None
            model = models.get(n) if models else None
            rows.append(
                _row(
                    convo,
                    f"{cause}:{i}",
                    m,
                    now,
                    failed=failed,
                    until=until,
                    quote=quote,
                    model=model,
                )
            )
        if unsent:
            self._metrics.not_sent.inc("window", by=unsent)
            log.info(
                "%d message(s) for %s not sent: %s and no template: fallback (flow %s, step %r)",
                unsent,
                mask(convo.key),
                OUTSIDE_WINDOW,
                convo.flow,
                convo.state,
            )
        return rows

    async def _commit(
        self,
        convo: Conversation,
        messages: list[MessageRow],
        now: float,
        timers: list[TimerWrite] | None = None,
    ) -> None:
        convo.updated_at = now
        op = Commit(
            ConversationRow(
                key=convo.key,
                number=convo.number,
                flow=convo.flow,
                state=convo.state,
                handoff=convo.held(now),
                updated_at=now,
                snapshot=convo.snapshot(),
            ),
            messages,
            timers or (),
        )
        # While the store is down the contact waits rather than skip ahead: its events stay in
        # order. A write the store rejects (StoreRejected) is not retried.
        await retrying(lambda: self._committer.submit(op), self._clock)
        if timers:
            self._on_timers(timers)
        outbound = [m for m in messages if m.direction == "out" and m.status == "pending"]
        if outbound:
            self._delivery.enqueue(outbound)


OPTED_OUT = "the customer stopped marketing messages"
STOPPED = "the customer replied STOP: nothing is sent until they write again"


def _row(
    convo: Conversation,
    ident: str,
    m: OutMessage,
    now: float,
    *,
    failed: str | None,
    until: float,
    quote: str | None,
    model: str | None = None,
) -> MessageRow:
    """An outbox row (or, `failed` saying why, a message recorded as not sent); `model`: the
    model that wrote it, shown in the transcript."""
    return MessageRow(
        id=ident,
        contact=convo.key,
        direction="out",
        number=convo.number,
        type=kind_of(m),
        text=preview(m),
        status="failed" if failed else "pending",
        error_title=failed,
        at=now,
        payload=json.dumps(
            {
                "message": to_json(m),
                "phone": convo.phone,
                "user_id": convo.user_id,
                "until": until,  # the window closes then: delivery checks again
                "flow": convo.flow,
                "state": convo.state,
                "reply_to": quote,  # a contextual reply: it quotes the customer's message
                **({"model": model} if model else {}),
            },
            separators=(",", ":"),
        ),
    )


def _opted_out(convo: Conversation, m: TemplateMessage, now: float) -> str | None:
    """Why a marketing template must not go to this customer now, or None. Templates declared
    utility or authentication still go: order updates and codes are not marketing."""
    if m.category in ("utility", "authentication"):
        return None
    if convo.opted_out:
        return OPTED_OUT
    if convo.marketing_paused_until is not None and now < convo.marketing_paused_until:
        return f"{OPTED_OUT} for now (marketing limit, 131049)"
    return None


def _inbound(convo: Conversation, message: Message, status: str) -> MessageRow:
    return MessageRow(
        id=message.id,
        contact=convo.key,
        direction="in",
        number=convo.number,
        type=message.content.kind,
        text=scrub(message.text),
        status=status,
        at=float(message.timestamp),
        provider_id=message.id,
    )


def _answer(reply: asyncio.Future[Any] | None, value: Any) -> None:
    if reply is not None and not reply.done():
        reply.set_result(value)


def _utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))
