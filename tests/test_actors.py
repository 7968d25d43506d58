"""Actors: one message at a time per contact, isolated failures, bounded residency, clean stop."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import pytest

from engine.actors import Actor, ActorSystem
from engine.errors import ActorStopped


@dataclass
class Note:
    value: Any
    reply: asyncio.Future[Any] | None = None


class Recorder:
    """Records what each actor saw; 'boom' raises; sleeps a little to invite interleaving."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}
        self.running: set[str] = set()
        self.overlaps = 0
        self.activations = 0

    async def receive(self, actor: Actor, message: Note) -> None:
        if actor.state is None:
            self.activations += 1
            actor.state = "active"
        if actor.key in self.running:
            self.overlaps += 1
        self.running.add(actor.key)
        try:
            await asyncio.sleep(random.random() / 1000)
            if message.value == "boom":
                raise RuntimeError("boom")
            self.seen.setdefault(actor.key, []).append(message.value)
            if message.reply is not None:
                message.reply.set_result(("ok", message.value))
        finally:
            self.running.discard(actor.key)


async def test_each_contact_sees_its_messages_one_at_a_time_in_order() -> None:
    behaviour = Recorder()
    system = ActorSystem(behaviour, max_resident=1000)
    for i in range(50):
        for contact in range(40):
            system.tell(f"c{contact}", Note(i))
    await system.wait_idle()
    assert behaviour.overlaps == 0
    assert all(values == list(range(50)) for values in behaviour.seen.values())
    assert len(behaviour.seen) == 40 and system.depth == 0


async def test_only_a_bounded_number_of_actors_run_at_once() -> None:
    """A burst for 500 contacts runs at most max_running at a time, and every message is handled."""

    class Counting(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.peak = 0

        async def receive(self, actor: Actor, message: Note) -> None:
            self.peak = max(self.peak, len(self.running) + 1)
            await super().receive(actor, message)

    behaviour = Counting()
    system = ActorSystem(behaviour, max_resident=1000, max_running=16)
    for i in range(3):
        for contact in range(500):
            system.tell(f"c{contact}", Note(i))
    await system.wait_idle()
    assert behaviour.peak == 16
    assert len(behaviour.seen) == 500 and all(v == [0, 1, 2] for v in behaviour.seen.values())
    assert len(asyncio.all_tasks()) == 1  # no actor task outlives its mail


async def test_a_failing_message_stops_neither_its_actor_nor_others() -> None:
    behaviour = Recorder()
    system = ActorSystem(behaviour, max_resident=10)
    for value in (1, "boom", 2):
        system.tell("a", Note(value))
    system.tell("b", Note(3))
    reply = asyncio.get_running_loop().create_future()
    system.tell("a", Note("boom", reply))
    with pytest.raises(RuntimeError, match="boom"):
        await reply
    await system.wait_idle()
    assert behaviour.seen == {"a": [1, 2], "b": [3]}


async def test_idle_actors_beyond_the_bound_are_passivated() -> None:
    """Residency stays bounded; a passivated actor is reactivated on its next message."""
    behaviour = Recorder()
    system = ActorSystem(behaviour, max_resident=5)
    for contact in range(100):
        system.tell(f"c{contact}", Note(contact))
        await system.wait_idle()
    assert system.resident == 5
    system.tell("c0", Note("again"))
    await system.wait_idle()
    assert behaviour.activations == 101  # c0 came back from storage, not from memory


async def test_passivation_stays_cheap_when_many_actors_wait_for_a_slot() -> None:
    """With far more busy actors than the bound, telling stays O(1): no scan of busy actors.

    (Walking every resident actor on each tell made a backlog of 20,000 quadratic.)"""

    class Quick(Recorder):
        async def receive(self, actor: Actor, message: Note) -> None:
            self.seen.setdefault(actor.key, []).append(message.value)

    behaviour = Quick()
    system = ActorSystem(behaviour, max_resident=100, max_running=8)
    for contact in range(20_000):
        system.tell(f"c{contact}", Note(contact))
    assert system.resident == 20_000  # busy actors are never dropped
    await system.wait_idle()
    assert system.resident == 100 and len(behaviour.seen) == 20_000


async def test_ask_returns_the_answer() -> None:
    system = ActorSystem(Recorder(), max_resident=10)
    answer = await system.ask("a", Note(7, asyncio.get_running_loop().create_future()))
    assert answer == ("ok", 7)


async def test_stop_fails_pending_asks_instead_of_leaving_them_hanging() -> None:
    class Slow(Recorder):
        async def receive(self, actor: Actor, message: Note) -> None:
            await asyncio.sleep(10)

    system = ActorSystem(Slow(), max_resident=10)
    loop = asyncio.get_running_loop()
    running, queued = loop.create_future(), loop.create_future()
    system.tell("a", Note(1, running))
    system.tell("a", Note(2, queued))
    await asyncio.sleep(0.01)
    await system.stop()
    for future in (running, queued):
        with pytest.raises(ActorStopped):
            future.result()
    late = loop.create_future()
    system.tell("a", Note(3, late))
    with pytest.raises(ActorStopped):
        late.result()
