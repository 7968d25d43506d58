"""Conversations: safe recovery from failing steps, flow changes, and replay after a crash."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.stores.sqlite import SqliteStore
from engine.engine import Engine, EngineConfig
from engine.events import Customer, Message, Text, encode
from engine.flows import Flow, Flows, load_flows
from engine.flows.machine import ConversationView, Effects
from engine.memstore import MemoryStore
from engine.outbound import TextMessage, to_json
from engine.ports import Accept, Commit, ConversationRow, JournalEntry, MessageRow, Store
from engine.records import Conversation
from tests.support import ROOT, Recorder


class Exploding(Flow):
    """The support flow, except that the word 'boom' makes a step raise (a bug in a flow)."""

    def handle(self, convo: ConversationView, message: Message) -> Effects:
        if message.text == "boom":
            raise RuntimeError("bug in a flow")
        return super().handle(convo, message)


def message(phone: str, wamid: str, words: str) -> Message:
    return Message(wamid, 1_750_000_000, Customer("n", phone=phone, name="Ana"), Text(words))


async def run(engine: Engine, *messages: Message) -> None:
    for m in messages:
        await engine.ingest([m])
    await engine.actors.wait_idle()
    await engine.delivery.wait_empty()


class Lifecycle:
    """Closes every engine and store a test opened, even when an assertion fails first."""

    def __init__(self) -> None:
        self.closers: list[Any] = []

    async def store(self, path: Path) -> SqliteStore:
        store = SqliteStore(path)
        await store.open()
        self.closers.append(store.close)
        return store

    async def engine(self, store: Store, flows: Flows, sender: Recorder, **config: Any) -> Engine:
        engine = Engine(
            store=store,
            sender=sender,
            flows=flows,
            config=EngineConfig(send_concurrency=4, **config),
        )
        await engine.start()
        self.closers.insert(0, engine.close)
        return engine


@pytest.fixture
async def life() -> AsyncIterator[Lifecycle]:
    lifecycle = Lifecycle()
    yield lifecycle
    for close in lifecycle.closers:
        await close()


GREETING = "Hi Ana! Welcome to Acme Supplies. How can we help you today?"


async def test_a_failing_step_apologises_and_restarts_then_hands_off(life: Lifecycle) -> None:
    spec = load_flows(ROOT / "flows", "support").entry_flow.spec
    flows = Flows({"support": Exploding(spec)}, "support")
    sender = Recorder()
    engine = await life.engine(MemoryStore(), flows, sender)
    await run(
        engine, message("1", "w1", "hi"), message("2", "x1", "hi"), message("1", "w2", "boom")
    )
    assert sender.texts("n:1")[-2:] == [
        "Sorry, something went wrong on our side. Let's start again.",
        GREETING,
    ]
    await run(
        engine,
        message("1", "w3", "hi there"),
        message("1", "w4", "boom"),
        message("1", "w5", "boom"),
    )
    assert (
        sender.texts("n:1")[-1]
        == "Sorry, something went wrong on our side. A member of our team will reply here."
    )
    view = await engine.view("n:1")
    assert view["handoff"] is True
    await run(engine, message("1", "w6", "hello?"), message("2", "x2", "how much is sand?"))
    assert sender.texts("n:1")[-1].startswith("Sorry, something went wrong")  # silent while held
    assert sender.texts("n:2")[-2].startswith("Cement is $11.50")  # the neighbour never noticed
    assert engine.metrics.flow_errors.get("support") == 3
    assert engine.metrics.handoffs.get("error") == 1


def write_flow(folder: Path, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "shop.yaml").write_text(textwrap.dedent(text).lstrip("\n"))


V1 = """
start: ask
states:
  ask:
    say: "Name?"
    on:
      - kind: text
        save: who
        go: colour
  colour:
    say: "Colour, {who}?"
    on:
      - kind: text
        go: ask
"""


async def test_a_changed_flow_keeps_conversations_whose_state_still_exists(
    tmp_path: Path, life: Lifecycle
) -> None:
    store, sender = await life.store(tmp_path / "db.sqlite3"), Recorder()
    write_flow(tmp_path / "flows", V1)
    first = await life.engine(store, load_flows(tmp_path / "flows", "shop"), sender)
    await run(first, message("1", "w1", "hi"), message("1", "w2", "Ana"), message("2", "x1", "hi"))
    await first.close()
    # v2 renames the state `colour` to `color`: contact 1 was in colour, contact 2 in ask.
    write_flow(tmp_path / "flows", V1.replace("colour", "color"))
    engine = await life.engine(store, load_flows(tmp_path / "flows", "shop"), sender)
    await run(engine, message("1", "w3", "blue"), message("2", "x2", "Bo"))
    assert sender.texts("n:1")[-1] == "Name?"  # its state is gone: restarted deliberately
    assert (await engine.view("n:1"))["state"] == "ask"
    assert sender.texts("n:2")[-1] == "Colour, Bo?"  # its state exists: carried on in v2
    assert (await engine.view("n:2"))["state"] == "color"
    assert engine.metrics.restarts.total() == 1


async def test_replay_after_a_crash_handles_what_was_left_once(
    tmp_path: Path, life: Lifecycle
) -> None:
    """Unsent replies are sent once; unhandled journal entries are handled, in order, once."""
    store = await life.store(tmp_path / "db.sqlite3")
    flows = load_flows(ROOT / "flows", "support")
    # What a crash can leave: a conversation with a reply not yet sent, and accepted events
    # that no snapshot covers yet.
    snapshot = Conversation(
        "n:1",
        "n",
        phone="1",
        name="Ana",
        flow="support",
        flow_version=flows.entry_flow.version,
        state="menu",
        last_seq=1,
    ).snapshot()
    pending = MessageRow(
        "r:w1:0",
        "n:1",
        "out",
        "n",
        "text",
        "pending hello",
        "pending",
        1.0,
        payload=json.dumps(
            {"message": to_json(TextMessage("pending hello")), "phone": "1", "user_id": None}
        ),
    )
    await store.write(
        [
            Accept(journal=[JournalEntry("n:1", "w1", encode(message("1", "w1", "hi")), 1.0)]),
            Commit(ConversationRow("n:1", "n", "support", "menu", False, 1.0, snapshot), [pending]),
            Accept(
                journal=[
                    JournalEntry(
                        "n:1", "w2", encode(message("1", "w2", "how much is cement?")), 2.0
                    ),
                    JournalEntry("n:2", "x1", encode(message("2", "x1", "hi")), 2.0),
                ]
            ),
        ]
    )
    sender = Recorder()
    engine = await life.engine(store, flows, sender)
    await engine.actors.wait_idle()
    await engine.delivery.wait_empty()
    assert sender.texts("n:1") == [
        "pending hello",
        "Cement is $11.50 per 50 kg bag, sand $4.20 per bag and gravel $5.10 per bag. Ask for a quote on 100 bags or more.",
        "Is there anything else I can help with?",
    ]
    assert sender.texts("n:2") == [GREETING]
    await engine.close()
    # A second restart finds nothing left to do.
    again = Recorder()
    engine = await life.engine(store, flows, again)
    await engine.actors.wait_idle()
    await engine.delivery.wait_empty()
    assert again.sent == []


async def test_residency_is_bounded_and_conversations_survive_passivation(life: Lifecycle) -> None:
    sender = Recorder()
    engine = await life.engine(
        MemoryStore(), load_flows(ROOT / "flows", "support"), sender, max_actors=10
    )
    for c in range(100):
        await run(engine, message(str(c), f"w{c}", "hi"))
    assert engine.actors.resident == 10
    await run(engine, message("0", "again", "Opening hours"))  # contact 0 was passivated long ago
    assert sender.texts("n:0")[-2].startswith("We're open Monday")
    assert engine.flows.live_instances == 1
