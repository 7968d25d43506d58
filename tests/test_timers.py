"""Durable timers: a step's timeout ladder and delays, the hand-off expiry, the scheduler's
window of soonest timers, and firing exactly once across a restart (on a clock tests move)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, TypeVar

from adapters.stores.sqlite import SqliteStore
from engine.engine import Engine, EngineConfig
from engine.events import Customer, Message, Text
from engine.flows import load_flows
from engine.memstore import MemoryStore
from engine.ports import Commit, ConversationRow, Store, TimerWrite
from engine.timers import Scheduler
from tests.fakes.clock import FakeClock
from tests.support import Recorder

SHOP = """
start: cart
states:
  cart:
    say: "What would you like?"
    on:
      - text: pizza
        say: "Added a pizza."
      - text: done
        go: paid
    timeout:
      - after: 30m
        say: "Still there? Your cart is saved."
      - after: 20h
        say: "I've closed your cart."
        go: closed
  paid:
    say: "Thanks! We'll check in later."
    after: 2h
    then: followup
  followup:
    say: "How was your pizza?"
    end: true
  closed:
    say: "Cart closed."
    end: true
"""


def write(folder: Path, text: str = SHOP) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "shop.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return folder


class Shop:
    """An engine on a store, a recording sender and a clock the test moves."""

    def __init__(self, engine: Engine, sender: Recorder, clock: FakeClock) -> None:
        self.engine, self.sender, self.clock = engine, sender, clock
        self.n = 0

    async def send(self, words: str, phone: str = "1") -> None:
        self.n += 1
        m = Message(
            f"w{self.n}.{phone}",
            int(self.clock.now()),
            Customer("n", phone=phone, name="Ana"),
            Text(words),
        )
        await self.engine.ingest([m])

    async def say(self, words: str, phone: str = "1") -> list[str]:
        before = len(self.sender.texts(f"n:{phone}"))
        await self.send(words, phone)
        await self.settle()
        return self.sender.texts(f"n:{phone}")[before:]

    async def wait(self, seconds: float, phone: str = "1") -> list[str]:
        before = len(self.sender.texts(f"n:{phone}"))
        await self.clock.advance(seconds)
        await self.settle()
        return self.sender.texts(f"n:{phone}")[before:]

    async def settle(self) -> None:
        await self.engine.actors.wait_idle()
        await self.engine.delivery.wait_empty()


S = TypeVar("S", bound=Shop)


async def shop(
    opened: list[Any],
    folder: Path,
    store: Store | None = None,
    clock: FakeClock | None = None,
    kind: type[S] = Shop,  # type: ignore[assignment]
    *,
    sender: Recorder | None = None,
) -> S:
    clock = clock or FakeClock()
    sender = sender or Recorder()
    engine = Engine(
        store=store or MemoryStore(),
        sender=sender,
        flows=load_flows(folder, "shop"),
        clock=clock,
        config=EngineConfig(handoff_ttl=3600.0),
    )
    await engine.start()
    opened.append(engine.close)
    return kind(engine, sender, clock)


async def test_silence_gets_a_reminder_then_the_cart_closes(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    assert await s.say("hi") == ["What would you like?"]
    assert await s.wait(29 * 60) == []
    assert await s.wait(61) == ["Still there? Your cart is saved."]
    assert await s.wait(19 * 3600) == []
    assert await s.wait(31 * 60) == ["I've closed your cart.", "Cart closed."]
    view = await s.engine.view("n:1")
    assert view["state"] == "closed"
    assert s.engine.metrics.timers.get("flow", "fired") == 2
    assert await s.engine.store.timers(None, 10) == []


async def test_a_message_restarts_the_silence(tmp_path: Path, opened: list[Any]) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi")
    await s.wait(20 * 60)
    assert await s.say("pizza") == ["Added a pizza."]
    assert await s.wait(20 * 60) == []  # 40 minutes since the step began, 20 since the message
    assert await s.wait(11 * 60) == ["Still there? Your cart is saved."]


async def test_moving_on_voids_the_timer(tmp_path: Path, opened: list[Any]) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi")
    assert await s.say("done") == ["Thanks! We'll check in later."]
    assert await s.wait(3600) == []  # no cart reminder: the conversation left the cart
    assert await s.wait(3601) == ["How was your pizza?"]


async def test_a_message_during_a_delay_does_not_postpone_it(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi")
    await s.say("done")
    await s.wait(3600)
    await s.say("thanks!")  # the re-prompt ladder answers; the delay keeps its due time
    assert await s.wait(3601) == ["How was your pizza?"]


async def test_a_reminder_outside_the_24_hour_window_is_recorded_not_sent(
    tmp_path: Path, opened: list[Any]
) -> None:
    flows = write(
        tmp_path / "flows",
        """
        start: wait
        states:
          wait:
            say: "Reply any time."
            on:
              - kind: any
                go: wait
            timeout:
              - after: 25h
                say: "Are you still interested?"
        """,
    )
    s = await shop(opened, flows)
    await s.say("hi")
    assert await s.wait(25 * 3600 + 1) == []
    view = await s.engine.view("n:1")
    last = view["messages"][-1]
    assert last["text"] == "Are you still interested?"
    assert last["status"] == "failed"
    assert last["error"] == {"code": None, "title": "outside the 24-hour window"}
    assert s.engine.metrics.not_sent.get("window") == 1


async def test_handoff_ttl_is_a_timer(tmp_path: Path, opened: list[Any]) -> None:
    flows = write(
        tmp_path / "flows",
        """
        start: ask
        handback: "The assistant is back. Type anything to start again."
        states:
          ask:
            say: "Hello"
            on:
              - keywords: [agent]
                go: person
          person:
            say: "A person will answer."
            handoff: true
        """,
    )
    s = await shop(opened, flows)
    await s.say("hi")
    assert await s.say("agent") == ["A person will answer."]
    assert [t.kind for t in await s.engine.store.timers(None, 10)] == ["handoff"]
    await s.engine.agent_reply("n:1", "Maria here")
    await s.wait(3599)
    assert await s.wait(2) == ["The assistant is back. Type anything to start again."]
    assert (await s.engine.view("n:1"))["handoff"] is False
    assert await s.say("hi again") == ["Hello"]
    assert await s.engine.store.timers(None, 10) == []


async def test_a_timer_due_while_the_process_was_down_fires_once_at_start(
    tmp_path: Path, opened: list[Any]
) -> None:
    """A timer that fell due while the process was down fires at the next start, once: the
    restart after that finds the next rung armed, not the same one again."""
    flows = write(tmp_path / "flows")
    path = tmp_path / "engine.sqlite3"
    clock = FakeClock()
    sent: list[str] = []
    for restart in range(3):
        store = SqliteStore(path)
        await store.open()
        opened.append(store.close)
        s = await shop(opened, flows, store, FakeClock(now=clock.now() + restart * 3 * 3600))
        if restart == 0:
            await s.say("hi")
        await s.wait(0)
        sent += s.sender.texts("n:1")
        await s.engine.close()
        await store.close()
        opened.clear()
    assert sent == ["What would you like?", "Still there? Your cart is saved."]
    store = SqliteStore(path)
    await store.open()
    opened.append(store.close)
    (timer,) = await store.timers(None, 10)
    assert timer.rung == 1  # the next rung, 20h after the step began waiting


async def test_the_scheduler_holds_a_window_and_reads_the_rest_in_pages() -> None:
    store = MemoryStore()
    clock = FakeClock(now=0.0)
    fired: list[str] = []
    scheduler = Scheduler(store, clock, lambda t: fired.append(t.contact), page=3)
    writes = [TimerWrite(f"c{i:02d}", "flow", 100.0 + i) for i in range(10)]
    await commit_timers(store, writes)
    await scheduler.start()
    assert scheduler.held == 3
    scheduler.note([TimerWrite("late", "flow", 500.0)])  # beyond the window: stays in the store
    await commit_timers(store, [TimerWrite("late", "flow", 500.0)])
    scheduler.note([TimerWrite("early", "flow", 50.0)])  # inside it: held
    await commit_timers(store, [TimerWrite("early", "flow", 50.0)])
    scheduler.note([TimerWrite("c01", "flow", None)])  # cleared
    await store_clear(store, "c01")
    assert scheduler.held == 3
    await clock.advance(600)
    assert fired == ["early", "c00", *[f"c{i:02d}" for i in range(2, 10)], "late"]
    assert scheduler.held == 0


async def test_due_timers_wait_while_the_backlog_is_full() -> None:
    store = MemoryStore()
    clock = FakeClock(now=0.0)
    fired: list[str] = []
    busy = [True]
    scheduler = Scheduler(store, clock, lambda t: fired.append(t.contact), busy=lambda: busy[0])
    await commit_timers(store, [TimerWrite("a", "flow", 1.0), TimerWrite("b", "flow", 2.0)])
    await scheduler.start()
    await clock.advance(10)
    assert fired == []
    busy[0] = False
    await clock.advance(1)
    assert fired == ["a", "b"]


async def commit_timers(store: MemoryStore, writes: list[TimerWrite]) -> None:
    row = ConversationRow("n:x", "n", "shop", None, False, 0.0, {"v": 2, "number": "n"})
    await store.write([Commit(row, timers=writes)])


async def store_clear(store: MemoryStore, contact: str) -> None:
    await commit_timers(store, [TimerWrite(contact, "flow", None)])


async def test_the_support_flow_reminds_a_customer_who_goes_quiet_mid_question(
    opened: list[Any],
) -> None:
    from tests.support import ROOT

    clock = FakeClock()
    sender = Recorder()
    engine = Engine(
        store=MemoryStore(),
        sender=sender,
        flows=load_flows(ROOT / "flows", "support"),
        clock=clock,
    )
    await engine.start()
    opened.append(engine.close)
    s = Shop(engine, sender, clock)
    await s.say("hi")
    assert await s.say("Ask a question") == [
        "Sure, what would you like to know? Ask in your own words."
    ]
    assert await s.wait(9 * 60) == []
    assert await s.wait(61) == [
        "Still there? Type your question whenever you're ready, or *agent* to talk to a person."
    ]
    assert await s.wait(24 * 3600) == []  # one reminder, not a stream of them
