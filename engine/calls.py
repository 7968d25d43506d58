"""Running actions outside the actor's run slot, bounded in time, their outcome sent back as mail.

    step enters `action:`  -> snapshot records the call (key, name, args) + an "action" timer
    after the commit       -> actor suspended (its later mail waits, in order), Calls.start
    the call ends          -> Done(key, outcome) resumed at the front of the actor's mailbox
    the actor handles Done -> on_done:/on_error:, the call cleared, in one commit

The call races `within` on the injected clock: a call still running then is abandoned with
kind "timeout" (a plain function's thread cannot be stopped; its result is ignored). A crash
loses only the in-flight task: the snapshot still records the call, so it is made again (same
key, next attempt) when the customer writes or the action timer falls due. Actions therefore run
at least once, and `ctx.key` lets the business system make them exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .actions import ActionContext, ActionFailed, Actions, to_value
from .flows.values import Value
from .logs import mask
from .metrics import Metrics
from .ports import Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: a result, or an error kind ("timeout", "unavailable", "error", or the
    kind an ActionFailed carried) with a message for the flow's `error` slot."""

    result: Value = None
    kind: str | None = None  # None: done
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.kind is None


@dataclass(slots=True)
class Done:
    """Mail for the actor whose call ended (see engine.conversation)."""

    key: str  # the call's idempotency key: a Done for another call is void
    outcome: Outcome
    reply: asyncio.Future[Any] | None = None


class Calls:
    def __init__(
        self,
        actions: Actions,
        clock: Clock,
        metrics: Metrics,
        resume: Callable[[str, Done], None],
    ) -> None:
        self._actions = actions
        self._clock = clock
        self._metrics = metrics
        self._resume = resume
        self._tasks: dict[str, asyncio.Task[None]] = {}  # contact -> its call in flight
        self._stopped = False

    def use(self, actions: Actions) -> None:
        """The actions of reloaded flows, for calls made from now on."""
        self._actions = actions

    def within_of(self, name: str) -> float | None:
        """How long a built-in that bounds its own time may take (a model's turn), else None."""
        definition = self._actions.get(name)
        return definition.within if definition is not None else None

    def available(self, name: str) -> bool:
        definition = self._actions.get(name)
        return definition is not None and definition.fn is not None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, ctx: ActionContext, name: str, args: dict[str, Value], within: float) -> None:
        """Call `name` for `ctx.contact`; its Done reaches the contact's actor when it ends."""
        if self._stopped:
            return  # shutting down: the call stays recorded and is made after the restart
        task = asyncio.create_task(self._run(ctx, name, args, within), name=f"action:{name}")
        self._tasks[ctx.contact] = task

    async def stop(self) -> None:
        """Abandon the calls in flight; they stay recorded and are made again after a restart."""
        self._stopped = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _run(
        self, ctx: ActionContext, name: str, args: dict[str, Value], within: float
    ) -> None:
        started = time.perf_counter()
        try:
            outcome = await self._outcome(ctx, name, args, within)
        finally:
            self._tasks.pop(ctx.contact, None)
        self._metrics.actions.inc(name, outcome.kind or "done")
        self._metrics.action_time.observe(time.perf_counter() - started)
        self._resume(ctx.contact, Done(ctx.key, outcome))

    async def _outcome(
        self, ctx: ActionContext, name: str, args: dict[str, Value], within: float
    ) -> Outcome:
        definition = self._actions.get(name)
        if definition is None or definition.fn is None:
            log.error("action %r is not available in this process", name)
            return Outcome(kind="unavailable", message=f"action {name!r} is not available")
        call = asyncio.ensure_future(definition.call(ctx, args))
        limit = asyncio.ensure_future(self._clock.sleep(within))
        started = time.perf_counter()
        try:
            await asyncio.wait({call, limit}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the engine is stopping
            call.cancel()
            raise
        finally:
            limit.cancel()
        if not call.done():
            call.cancel()
            log.warning(
                "action %s for %s took longer than %.0fs; abandoned",
                name,
                mask(ctx.contact),
                within,
            )
            return Outcome(kind="timeout", message=f"no answer within {within:.0f}s")
        took = time.perf_counter() - started
        if took > within + 0.5 and definition.is_async:
            # The limit could not fire: the action held the event loop (time.sleep, requests,
            # a blocking driver inside async def), and every other conversation waited too.
            log.warning(
                "action %s ran %.1fs, past its within: of %.0fs, without letting the engine run"
                " meanwhile; blocking code belongs in a plain def (it runs in a thread) or an"
                " async client",
                name,
                took,
                within,
            )
        error = call.exception()
        if error is None:
            try:
                return Outcome(result=to_value(call.result()))
            except ActionFailed as e:
                log.error("action %s returned what a slot cannot hold: %s", name, e.message)
                return Outcome(kind=e.kind, message=e.message)
        if isinstance(error, ActionFailed):
            log.info(
                "action %s for %s failed (%s): %.300s",
                name,
                mask(ctx.contact),
                error.kind,
                error.message,
            )
            return Outcome(kind=error.kind, message=error.message)
        log.error("action %s for %s raised", name, mask(ctx.contact), exc_info=error)
        return Outcome(kind="error", message=f"{type(error).__name__}")
