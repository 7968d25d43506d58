"""Actors: one per contact, each with a mailbox handled one message at a time.

An actor exists only as a key, a deque and (while busy) a task; its state is whatever the
behaviour keeps on it. Actors are created on first use and passivated when idle and the number
resident exceeds `max_resident` (least recently used first); the behaviour reactivates state from
the store. At most `max_running` actors run at once; others with mail wait their turn in a run
queue, so a 1000-message batch does not flood the event loop with 1000 tasks in front of the next
webhook. A message that raises is logged and counted by the behaviour's own handling; if it still
escapes, the actor goes on with its next message. Stopping fails every pending ask.

An actor whose behaviour waits on something slow (an action calling a business system) is
suspended: it gives up its run slot so other contacts proceed, its later mail waits in order,
and it is neither run nor passivated until `resume` puts the awaited result at the front of its
mailbox. A suspended actor counts as busy, so draining waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from typing import Any, Protocol

from .errors import ActorStopped
from .logs import mask

log = logging.getLogger(__name__)


class Envelope(Protocol):
    """A mailbox message; `reply` is set when the sender waits for an answer (an ask)."""

    reply: asyncio.Future[Any] | None


class Actor:
    __slots__ = ("key", "mailbox", "queued", "state", "suspended", "task")

    def __init__(self, key: str) -> None:
        self.key = key
        self.mailbox: deque[Envelope] = deque()
        self.task: asyncio.Task[None] | None = None
        self.queued = False  # waiting in the run queue for a free slot
        self.suspended = False  # waiting for `resume`: its mail is not handled meanwhile
        self.state: Any = None


class Behaviour(Protocol):
    async def receive(self, actor: Actor, message: Any) -> None: ...


class ActorSystem:
    def __init__(self, behaviour: Behaviour, *, max_resident: int, max_running: int = 128) -> None:
        self._behaviour = behaviour
        self._max = max_resident
        self._max_running = max_running
        self._actors: dict[str, Actor] = {}
        # Idle actors, least recently used first: passivation takes from the front in O(1),
        # never walking past actors that are busy or waiting for a slot.
        self._idle_lru: OrderedDict[str, None] = OrderedDict()
        self._runnable: deque[Actor] = deque()
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self.depth = 0  # messages waiting in all mailboxes
        self._stopped = False

    @property
    def resident(self) -> int:
        return len(self._actors)

    def tell(self, key: str, message: Envelope) -> None:
        if self._stopped:
            if message.reply is not None and not message.reply.done():
                message.reply.set_exception(ActorStopped(key))
            return
        actor = self._actors.get(key)
        if actor is None:
            actor = self._actors[key] = Actor(key)
        else:
            self._idle_lru.pop(key, None)
        actor.mailbox.append(message)
        self.depth += 1
        if actor.task is None and not actor.queued and not actor.suspended:
            self._busy += 1
            self._idle.clear()
            self._schedule(actor)
        self._passivate()

    def suspend(self, actor: Actor) -> None:
        """Called by the behaviour while it handles a message: once that returns, the actor
        stops taking mail (keeping it in order) until `resume`."""
        actor.suspended = True

    def requeue(self, actor: Actor, message: Envelope) -> None:
        """Put `message` back at the front of the actor's mailbox (it runs next)."""
        actor.mailbox.appendleft(message)
        self.depth += 1

    def resume(self, key: str, message: Envelope) -> None:
        """Wake a suspended actor with `message`, which it handles before its other mail."""
        actor = self._actors.get(key)
        if self._stopped or actor is None or not actor.suspended:
            _fail(message, ActorStopped(key))
            return
        actor.suspended = False
        self.requeue(actor, message)
        if actor.task is None and not actor.queued:
            self._schedule(actor)  # still counted busy since it was suspended

    def _schedule(self, actor: Actor) -> None:
        if self._running < self._max_running:
            self._start(actor)
        else:
            actor.queued = True
            self._runnable.append(actor)

    def _start(self, actor: Actor) -> None:
        self._running += 1
        actor.task = asyncio.create_task(self._run(actor), name=f"actor:{mask(actor.key)}")

    async def ask(self, key: str, message: Envelope) -> Any:
        """Tell `message` (which must carry a fresh `reply` future) and wait for the answer."""
        assert message.reply is not None
        self.tell(key, message)
        return await message.reply

    async def _run(self, actor: Actor) -> None:
        try:
            while actor.mailbox and not actor.suspended:
                message = actor.mailbox.popleft()
                self.depth -= 1
                try:
                    await self._behaviour.receive(actor, message)
                except asyncio.CancelledError:
                    _fail(message, ActorStopped(actor.key))
                    raise
                except Exception as e:
                    log.exception("actor %s: message failed", mask(actor.key))
                    _fail(message, e)
        finally:
            actor.task = None
            self._running -= 1
            if not actor.suspended:
                self._busy -= 1
                if not actor.mailbox:
                    self._idle_lru[actor.key] = None
            if self._runnable and not self._stopped:
                following = self._runnable.popleft()
                following.queued = False
                self._start(following)
            if self._busy == 0:
                self._idle.set()
            self._passivate()

    def _passivate(self) -> None:
        """Drop the least recently used idle actors beyond the bound; their state is stored."""
        while len(self._actors) > self._max and self._idle_lru:
            key, _ = self._idle_lru.popitem(last=False)
            del self._actors[key]

    async def wait_idle(self) -> None:
        """Return once every mailbox is empty and no actor is running."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Stop every actor now: running messages are cancelled, pending asks fail."""
        self._stopped = True
        self._runnable.clear()
        tasks = [a.task for a in self._actors.values() if a.task is not None]
        for actor in self._actors.values():
            while actor.mailbox:
                _fail(actor.mailbox.popleft(), ActorStopped(actor.key))
                self.depth -= 1
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._actors.clear()
        self._idle_lru.clear()
        self._busy = 0
        self._idle.set()


def _fail(message: Envelope, error: BaseException) -> None:
    reply = getattr(message, "reply", None)
    if reply is not None and not reply.done():
        reply.set_exception(error)
