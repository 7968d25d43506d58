"""Webhook -> contact actor -> flow -> reply through the fake Graph API, end to end."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.web import ENGINE
from tests.conftest import TEST_DATABASE_URL, AppFactory, postgres_schema, require_redis
from tests.fakes.graph import FakeGraph
from tests.support import (
    ADMIN,
    NUMBER,
    body,
    button,
    change,
    payload,
    signed,
    status,
    text,
)

ANSWERED = [
    "text",
    "text_classic",
    "text_bsuid_only",
    "image",
    "audio_voice",
    "video",
    "document",
    "sticker",
    "location",
    "location_current",
    "contacts",
    "button_reply",
    "list_reply",
    "flow_reply",
    "template_button",
    "order",
    "unsupported",
    "unknown_type",
    "interactive_without_body",
]
SILENT = [
    "reaction",
    "reaction_removed",
    "unsupported_edit",
    "system",
    "edit",
    "revoke",
    "status_sent",
    "status_read",
    "status_failed",
    "value_errors",
    "other_field",
]


class Harness:
    def __init__(self, client: Any, fake: FakeGraph) -> None:
        self.client = client
        self.fake = fake
        self.engine = client.app[ENGINE]

    async def post(self, doc: dict[str, Any] | bytes) -> int:
        raw, headers = signed(doc)
        response = await self.client.post(
            "/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers
        )
        return int(response.status)

    async def settle(self) -> None:
        await self.engine.actors.wait_idle()
        await self.engine.delivery.wait_empty()

    def replies_to(self, wamid: str) -> list[dict[str, Any]]:
        """What the provider received because of inbound message `wamid`."""
        return [
            r
            for r in self.fake.requests
            if r["body"]["biz_opaque_callback_data"].startswith(f"r:{wamid}:")
        ]

    async def conversation(self, contact: str, number: str | None = None) -> dict[str, Any]:
        params = {"number": number} if number else {}
        r = await self.client.get(
            f"/api/conversations/{contact}",
            params=params,
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status == 200, await r.text()
        result: dict[str, Any] = await r.json()
        return result


@pytest.fixture(params=["sqlite", "postgres+redis"])
async def h(
    request: pytest.FixtureRequest,
    start_app: AppFactory,
    env: dict[str, str],
    graph: tuple[FakeGraph, str],
) -> AsyncIterator[Harness]:
    """The engine on SQLite, and on Postgres behind Redis: every recorded payload must give
    the same answers on both."""
    if request.param == "sqlite":
        yield Harness(await start_app(env), graph[0])
        return
    env["REDIS_URL"] = await require_redis()
    async with postgres_schema() as schema:
        env["DATABASE_URL"] = f"{TEST_DATABASE_URL}?schema={schema}"
        client = await start_app(env)
        try:
            yield Harness(client, graph[0])
        finally:
            await client.close()  # before its schema is dropped


async def test_a_text_gets_the_greeting_through_the_number_that_received_it(h: Harness) -> None:
    assert await h.post(payload("text")) == 200
    await h.settle()
    (reply,) = h.replies_to("wamid.TEXT1")
    assert reply["number"] == NUMBER
    assert reply["body"]["to"] == "+16505551234"
    assert (
        reply["body"]["interactive"]["body"]["text"]
        == "Hi Sheena Nelson! Welcome to Acme Supplies. How can we help you today?"
    )
    view = await h.conversation("16505551234")
    assert [(m["direction"], m["status"]) for m in view["messages"]] == [
        ("in", "received"),
        ("out", "accepted"),
    ]
    assert view["messages"][1]["id"] == reply["wamid"]


@pytest.mark.parametrize("name", ANSWERED)
async def test_every_customer_message_kind_gets_an_answer(h: Harness, name: str) -> None:
    """Media, locations, replies, orders, unsupported and unknown kinds all reach the flow."""
    doc = payload(name)
    assert await h.post(doc) == 200
    await h.settle()
    wamid = doc["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    replies = h.replies_to(wamid)
    assert replies, f"{name} got no answer"
    recipient = replies[0]["body"].get("to") or replies[0]["body"].get("recipient")
    assert recipient in ("+16505551234", "+16505550000", "US.99887766554433221100")


@pytest.mark.parametrize("name", SILENT)
async def test_reactions_system_edits_statuses_and_errors_get_no_answer(
    h: Harness, name: str
) -> None:
    assert await h.post(payload(name)) == 200
    await h.settle()
    assert h.fake.requests == []


async def test_silent_kinds_are_still_recorded_in_the_transcript(h: Harness) -> None:
    await h.post(payload("text"))
    await h.post(payload("reaction"))
    await h.post(payload("edit"))
    await h.settle()
    view = await h.conversation("16505551234")
    assert [m["type"] for m in view["messages"] if m["direction"] == "in"] == [
        "text",
        "reaction",
        "edit",
    ]
    assert len(h.fake.requests) == 1


async def test_a_user_id_without_phone_is_answered_by_recipient(h: Harness) -> None:
    await h.post(payload("text_bsuid_only"))
    await h.settle()
    (reply,) = h.replies_to("wamid.BSUID1")
    assert reply["body"]["recipient"] == "US.99887766554433221100" and "to" not in reply["body"]


async def test_phone_and_user_id_are_linked_to_one_conversation(h: Harness) -> None:
    """Seen by phone, then with both, then by user id only: one conversation throughout."""
    await h.post(body(change([text("15557770001", "wamid.p1", "hi")])))
    await h.settle()
    await h.post(body(change([text("15557770001", "wamid.p2", "zzz", user_id="US.777")])))
    await h.settle()
    await h.post(body(change([text(None, "wamid.p3", "zzz", user_id="US.777")])))
    await h.settle()
    view = await h.conversation("US.777")
    assert [m["id"] for m in view["messages"] if m["direction"] == "in"] == [
        "wamid.p1",
        "wamid.p2",
        "wamid.p3",
    ]
    assert view["phone"] == "15557770001" and view["user_id"] == "US.777"
    # The reply to the user-id-only message still goes to the known phone number.
    assert h.replies_to("wamid.p3")[0]["body"]["to"] == "+15557770001"


async def test_a_batch_over_entries_and_numbers_answers_each_through_its_own_number(
    h: Harness,
) -> None:
    numbers = ["111111111111111", "222222222222222", "333333333333333"]
    changes = [
        change(
            [text(f"1555100{n}{i}", f"wamid.b{n}{i}", "hello") for i in range(4)], number=numbers[n]
        )
        for n in range(3)
    ]
    assert await h.post(body(*changes, entries=2)) == 200
    await h.settle()
    for n, number in enumerate(numbers):
        for i in range(4):
            (reply,) = h.replies_to(f"wamid.b{n}{i}")
            assert reply["number"] == number and reply["body"]["to"] == f"+1555100{n}{i}"


async def test_duplicates_and_rebatched_retries_are_acted_on_once(h: Harness) -> None:
    """The same message alone, again, and inside a different batch: one answer."""
    one = text("15552220001", "wamid.d1", "hi")
    two = text("15552220002", "wamid.d2", "hi")
    assert await h.post(body(change([one]))) == 200
    assert await h.post(body(change([one]))) == 200
    assert await h.post(body(change([two, one]), change([one]))) == 200
    await h.settle()
    assert len(h.replies_to("wamid.d1")) == 1 and len(h.replies_to("wamid.d2")) == 1
    assert h.engine.metrics.duplicates.get("message") == 3


async def test_concurrent_duplicate_deliveries_are_acted_on_once(h: Harness) -> None:
    doc = body(change([text("15552220003", "wamid.d3", "hi")]))
    assert await asyncio.gather(*(h.post(doc) for _ in range(20))) == [200] * 20
    await h.settle()
    assert len(h.replies_to("wamid.d3")) == 1


async def test_per_contact_order_under_concurrency(h: Harness) -> None:
    """40 contacts x 8 messages, contacts in parallel: each transcript and reply stream is in order."""
    h.fake.latency = 0.001
    contacts = [f"15553{c:06d}" for c in range(40)]

    async def converse(phone: str) -> None:
        for i in range(8):
            item = text(
                phone, f"wamid.{phone}.{i}", "menu", ts=1_750_000_000 + i
            )  # greets every time
            assert await h.post(body(change([item]))) == 200

    await asyncio.gather(*(converse(p) for p in contacts))
    await h.settle()
    for phone in contacts:
        view = await h.conversation(phone)
        inbound = [m["id"] for m in view["messages"] if m["direction"] == "in"]
        assert inbound == [f"wamid.{phone}.{i}" for i in range(8)]
        # Replies reached the provider in the order the flow produced them.
        sent = [
            r["body"]["biz_opaque_callback_data"]
            for r in h.fake.requests
            if r["body"]["to"] == f"+{phone}"
        ]
        produced = [m["ref"] for m in view["messages"] if m["direction"] == "out"]
        assert sent == produced == [f"r:wamid.{phone}.{i}:0" for i in range(8)]


async def test_messages_of_one_batch_are_handled_in_timestamp_order(h: Harness) -> None:
    late = text("15554440001", "wamid.late", "second", ts=1_750_000_010)
    early = button("15554440001", "wamid.early", "agent", "Talk to a person", ts=1_750_000_001)
    await h.post(body(change([late, early])))
    await h.settle()
    view = await h.conversation("15554440001")
    assert [m["id"] for m in view["messages"] if m["direction"] == "in"] == [
        "wamid.early",
        "wamid.late",
    ]


async def test_status_webhooks_update_the_transcript_and_never_go_backwards(h: Harness) -> None:
    await h.post(body(change([text("15556660001", "wamid.s1", "hi")])))
    await h.settle()
    (reply,) = h.replies_to("wamid.s1")
    wamid = reply["wamid"]
    await h.post(body(change([], statuses=[status(wamid, "sent")])))
    await h.post(body(change([], statuses=[status(wamid, "read")])))
    await h.post(body(change([], statuses=[status(wamid, "delivered")])))  # late, ignored
    await h.post(body(change([], statuses=[status(wamid, "read")])))  # duplicate
    view = await h.conversation("15556660001")
    assert view["messages"][-1]["status"] == "read"
    assert h.engine.metrics.duplicates.get("status") == 1
    assert h.fake.requests == [reply]


async def test_a_failed_status_records_its_error_code(h: Harness) -> None:
    await h.post(body(change([text("15556660002", "wamid.s2", "hi")])))
    await h.settle()
    wamid = h.replies_to("wamid.s2")[0]["wamid"]
    await h.post(body(change([], statuses=[status(wamid, "failed", code=131026)])))
    view = await h.conversation("15556660002")
    assert view["messages"][-1]["status"] == "failed"
    assert view["messages"][-1]["error"]["code"] == 131026


async def test_unknown_contact_and_raw_payload_helpers(h: Harness) -> None:
    """A raw JSON body with unicode is verified over its exact bytes."""
    raw = json.dumps(
        body(change([text("15558880001", "wamid.u1", "olá, preço?")])), ensure_ascii=False
    ).encode()
    assert await h.post(raw) == 200
    await h.settle()
    assert h.replies_to("wamid.u1")
