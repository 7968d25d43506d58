"""Bad input and failing parts cost only themselves: nothing wedges, nothing vanishes silently."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.channels.meta import parse, parse_body
from adapters.channels.whatsapp import AccessToken, CloudApiSender
from adapters.stores.sqlite import SqliteStore
from engine.committer import Committer
from engine.delivery import Delivery
from engine.directory import Directory
from engine.engine import Engine, EngineConfig
from engine.errors import StoreRejected, StoreUnavailable
from engine.events import Customer, Message, System, Text
from engine.flows import load_flows
from engine.memstore import MemoryStore
from engine.metrics import Metrics
from engine.outbound import TextMessage, to_json
from engine.ports import Accept, Accepted, Commit, ConversationRow, MessageRow, Op
from engine.settings import Secret
from tests.conftest import AppFactory
from tests.fakes.clock import FakeClock
from tests.fakes.graph import FakeGraph
from tests.support import ADMIN, ROOT, Recorder, eventually, signed, text

# --- the parser never raises ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
item_keys = st.sampled_from(
    [
        "id",
        "from",
        "from_user_id",
        "timestamp",
        "type",
        "text",
        "interactive",
        "context",
        "errors",
        "contacts",
        "image",
        "location",
        "system",
        "edit",
        "reaction",
        "order",
        "button",
        "status",
        "recipient_id",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(item_keys, json_values, max_size=8), json_values, json_values)
def test_no_item_shape_makes_the_parser_raise(
    item: dict[str, Any], metadata: Any, contacts: Any
) -> None:
    """Whatever an item, metadata or contacts list looks like, parse returns events or notes."""
    value = {"metadata": metadata, "contacts": contacts, "messages": [item], "statuses": [item]}
    doc = {"entry": [{"changes": [{"field": "messages", "value": value}]}]}
    parsed = parse(doc)
    assert len(parsed.events) + len(parsed.malformed) >= 1


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_no_body_makes_the_parser_raise(doc: Any) -> None:
    parse(doc)
    parse_body(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "value",
    [
        {"metadata": ["not", "an", "object"], "messages": [text("1", "w", "hi")]},
        {
            "metadata": {"phone_number_id": "1"},
            "contacts": [{"profile": "a string", "wa_id": "1"}],
            "messages": [text("1", "w", "hi")],
        },
        {
            "metadata": {"phone_number_id": "1"},
            "messages": [dict(text("1", "w", "hi"), timestamp="9" * 400)],
        },
        {
            "metadata": {"phone_number_id": "1"},
            "messages": [dict(text("1", "w", "hi"), timestamp=float("inf"))],
        },
        {
            "metadata": {"phone_number_id": "1"},
            "messages": [
                {"from": "1", "id": "w", "timestamp": "1", "type": "contacts", "contacts": ["x"]}
            ],
        },
        {
            "metadata": {"phone_number_id": "1"},
            "messages": [
                {
                    "from": "1",
                    "id": "w",
                    "timestamp": "1",
                    "type": "edit",
                    "edit": {"original_message_id": "o", "message": {"text": "str"}},
                }
            ],
        },
    ],
)
def test_shapes_that_once_escaped_as_exceptions(value: dict[str, Any]) -> None:
    parsed = parse({"entry": [{"changes": [{"field": "messages", "value": value}]}]})
    assert len(parsed.events) + len(parsed.malformed) >= 1


# --- half an emoji ----------------------------------------------------------------------------


async def test_half_an_emoji_is_stored_and_answered(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """A lone surrogate (an emoji cut in half) cannot be stored as UTF-8: it becomes U+FFFD."""
    fake, _ = graph
    client = await start_app(env)
    raw = b'{"entry":[{"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},"messages":[{"from":"15550001","id":"wamid.half","timestamp":"1750000000","type":"text","text":{"body":"hi \\ud83d"}}]}}]}]}'
    raw_signed, headers = signed(raw)
    assert (
        await client.post("/webhooks/whatsapp", data=io.BytesIO(raw_signed), headers=headers)
    ).status == 200
    await eventually(lambda: len(fake.requests) == 1)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    view = await (await client.get("/api/conversations/15550001", headers=auth)).json()
    assert view["messages"][0]["text"] == "hi \ufffd"
    r = await client.post(
        "/api/conversations/15550001/messages", json={"text": "ok \udc00"}, headers=auth
    )
    assert r.status == 200
    await eventually(lambda: len(fake.requests) == 2)
    assert fake.requests[-1]["body"]["text"]["body"] == "ok \ufffd"


# --- a write the store refuses ------------------------------------------------------------------


class PickyStore(MemoryStore):
    """A store that refuses, for what they hold, writes mentioning 'poison' (a stand-in for any
    value a real store cannot hold), and can be made unavailable for a number of reads."""

    def __init__(self) -> None:
        super().__init__()
        self.unavailable_reads = 0

    async def write(self, ops: Sequence[Op]) -> list[Accepted | None]:
        for op in ops:
            if isinstance(op, Commit) and any(
                "poison" in m.text and m.status == "received" for m in op.messages
            ):
                raise StoreRejected("cannot hold this")
            if isinstance(op, Accept) and any(e.event_id == "poison" for e in op.journal):
                raise StoreRejected("cannot hold this either")
        return await super().write(ops)

    async def conversation(self, key: str) -> ConversationRow | None:
        if self.unavailable_reads:
            self.unavailable_reads -= 1
            raise StoreUnavailable("disk I/O error")
        return await super().conversation(key)


def message(wamid: str, words: str, phone: str = "1") -> Message:
    return Message(wamid, 1_750_000_000, Customer("n", phone=phone, name="Ana"), Text(words))


async def settle(engine: Engine) -> None:
    await engine.actors.wait_idle()
    await engine.delivery.wait_empty()


async def test_an_event_the_store_refuses_is_recorded_as_failed_and_the_contact_goes_on() -> None:
    store, sender = PickyStore(), Recorder()
    engine = Engine(store=store, sender=sender, flows=load_flows(ROOT / "flows", "support"))
    await engine.start()
    try:
        for wamid, words in (("w1", "hi"), ("w2", "poison pill"), ("w3", "how much is cement?")):
            await engine.ingest([message(wamid, words)])
            await settle(engine)
        view = await engine.view("n:1")
        assert [(m["id"], m["status"]) for m in view["messages"] if m["direction"] == "in"] == [
            ("w1", "received"),
            ("w2", "failed"),
            ("w3", "received"),
        ]
        assert sender.sent[-2].message.body.startswith("Cement is $11.50")
        assert engine.metrics.handled.get("failed") == 1
    finally:
        await engine.close()


async def test_a_refused_webhook_is_recorded_event_by_event() -> None:
    """One event the store refuses does not take the other events of its webhook with it."""
    store, sender = PickyStore(), Recorder()
    engine = Engine(store=store, sender=sender, flows=load_flows(ROOT / "flows", "support"))
    await engine.start()
    try:
        accepted = await engine.ingest(
            [message("ok1", "hi", "1"), message("poison", "hi", "2"), message("ok2", "hi", "3")]
        )
        assert [e.event_id for _s, e in accepted.entries] == ["ok1", "ok2"]
        assert engine.metrics.malformed.total() == 1
        await settle(engine)
        assert {o.contact for o in sender.sent} == {"n:1", "n:3"}
    finally:
        await engine.close()


async def test_an_unavailable_store_is_waited_for_not_skipped() -> None:
    """If the snapshot cannot be read, the contact waits and the event is handled afterwards."""
    store, sender = PickyStore(), Recorder()
    engine = Engine(
        store=store,
        sender=sender,
        flows=load_flows(ROOT / "flows", "support"),
        config=EngineConfig(max_actors=1),
    )
    await engine.start()
    try:
        await engine.ingest([message("w1", "hi")])
        await engine.ingest([message("x1", "hi", phone="2")])  # passivates contact 1
        await settle(engine)
        store.unavailable_reads = 3
        await engine.ingest([message("w2", "Opening hours")])
        await settle(engine)
        assert sender.sent[-2].message.body.startswith("We're open Monday")
        assert engine.metrics.handled.get("failed") == 0
    finally:
        await engine.close()


# --- delivery ----------------------------------------------------------------------------------


async def test_an_unreadable_outbox_row_fails_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "o.sqlite3")
    await store.open()
    good = json.dumps({"message": to_json(TextMessage("fine")), "phone": "1", "user_id": None})
    rows = [
        MessageRow(
            "bad",
            "n:1",
            "out",
            "n",
            "text",
            "?",
            "pending",
            1.0,
            payload='{"message": {"type": "hologram"}}',
        ),
        MessageRow("good", "n:1", "out", "n", "text", "fine", "pending", 2.0, payload=good),
    ]
    await store.write(
        [
            Commit(
                ConversationRow("n:1", "n", "support", None, False, 1.0, {"v": 1, "number": "n"}),
                rows,
            )
        ]
    )
    sender = Recorder()
    engine = Engine(store=store, sender=sender, flows=load_flows(ROOT / "flows", "support"))
    await engine.start()
    try:
        await settle(engine)
        assert [o.id for o in sender.sent] == ["good"]
        bad, fine = await store.transcript("n:1", 5)
        assert bad.status == "failed" and (bad.error_title or "").startswith(
            "unreadable outbox payload"
        )
        assert fine.status == "accepted"
    finally:
        await engine.close()
        await store.close()


async def test_a_send_whose_answer_is_lost_is_retried_and_may_show_twice(
    graph: tuple[FakeGraph, str],
) -> None:
    """The documented window: the provider got the request, its answer did not come back."""
    fake, url = graph
    fake.latency = 0.5
    store, metrics = MemoryStore(), Metrics()
    committer = Committer(store, metrics)
    committer.start()
    row = MessageRow(
        "m1",
        "a",
        "out",
        "n",
        "text",
        "hi",
        "pending",
        1.0,
        payload=json.dumps({"message": to_json(TextMessage("hi")), "phone": "1", "user_id": None}),
    )
    await store.write([Commit(ConversationRow("a", "n", "f", "s", False, 1.0, {"v": 1}), [row])])
    async with aiohttp.ClientSession() as session:
        sender = CloudApiSender(session, url, AccessToken(Secret("tok")), timeout=0.2)
        clock = FakeClock()
        delivery = Delivery(sender, committer, metrics, clock=clock, concurrency=1)
        delivery.start()
        fake.latency = 0.5
        delivery.enqueue([row])
        await eventually(lambda: metrics.outbound.get("retried_maybe_sent", "") >= 1)
        assert delivery.paused()[0].cause == "outage"  # a timeout: the provider may be down
        fake.latency = 0.0
        await clock.advance(30)  # the probe
        await delivery.wait_empty()
        await delivery.stop(1.0)
    await committer.close()
    await eventually(lambda: len(fake.requests) >= 2)
    assert {r["body"]["biz_opaque_callback_data"] for r in fake.requests} == {"m1"}


# --- identity, re-prompts -------------------------------------------------------------------------


def test_forgetting_a_failed_relink_restores_the_previous_contact() -> None:
    d = Directory()
    _k1, _l1, _ = d.resolve(Customer("n", phone="155"))
    _k2, _l2, _ = d.resolve(Customer("n", user_id="US.9"))
    key, links, _new = d.resolve(
        Customer("n", user_id="US.9", phone="155")
    )  # relinks 155 -> n:US.9
    assert key == "n:US.9" and d.lookup("n", "155") == "n:US.9"
    d.forget(links)
    assert d.lookup("n", "155") == "n:155"
    assert d.resolve(Customer("n", phone="155")) == ("n:155", [], False)


async def test_a_changed_user_id_stays_in_the_same_conversation() -> None:
    sender = Recorder()
    engine = Engine(store=MemoryStore(), sender=sender, flows=load_flows(ROOT / "flows", "support"))
    await engine.start()
    try:
        first = Message("w1", 1, Customer("n", user_id="US.old", phone="155"), Text("hi"))
        notice = Message(
            "w2",
            2,
            Customer("n", user_id="US.old"),
            System("user_changed_user_id", new_user_id="US.new"),
        )
        later = Message("w3", 3, Customer("n", user_id="US.new"), Text("Opening hours"))
        for m in (first, notice, later):
            await engine.ingest([m])
            await settle(engine)
        view = await engine.view("n:US.old")
        assert [m["id"] for m in view["messages"] if m["direction"] == "in"] == ["w1", "w2", "w3"]
        assert view["user_id"] == "US.new"
    finally:
        await engine.close()


async def test_an_understood_answer_resets_the_reprompt_ladder(tmp_path: Path) -> None:
    """A branch that keeps the state (no go:) still counts as understood."""
    (tmp_path / "quiz.yaml").write_text(
        "start: ask\n"
        "otherwise:\n  - Try again.\n  - say: Getting a person.\n    go: human\n"
        "states:\n"
        "  ask:\n    say: Number?\n    on:\n      - regex: '^[0-9]+$'\n        say: Noted.\n"
        "  human:\n    say: A person will help.\n    handoff: true\n"
    )
    sender = Recorder()
    engine = Engine(store=MemoryStore(), sender=sender, flows=load_flows(tmp_path, "quiz"))
    await engine.start()
    try:
        for i, words in enumerate(["hi", "x", "12", "y", "34", "z"]):
            await engine.ingest([message(f"w{i}", words)])
            await settle(engine)
        assert [o.message.body for o in sender.sent] == [
            "Number?",
            "Try again.",
            "Noted.",
            "Try again.",
            "Noted.",
            "Try again.",
        ]
    finally:
        await engine.close()
