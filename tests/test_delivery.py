"""Delivery through the Cloud API sender to a fake Graph API: order, retries, permanent errors."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.whatsapp import CloudApiSender, graph_body, outcome
from engine.committer import Committer
from engine.delivery import Delivery, backoff
from engine.errors import PermanentDelivery, RetryableDelivery
from engine.memstore import MemoryStore
from engine.metrics import Metrics
from engine.outbound import Button, ButtonsMessage, ListMessage, Row, Section, TextMessage, to_json
from engine.ports import Commit, ConversationRow, MessageRow, Outgoing
from engine.settings import Secret
from tests.fakes.graph import FakeGraph, meta_error


def row(
    id_: str, contact: str, text: str, phone: str | None = "15550001", user_id: str | None = None
) -> MessageRow:
    return MessageRow(
        id_,
        contact,
        "out",
        "106540352242922",
        "text",
        text,
        "pending",
        1.0,
        payload=json.dumps(
            {"message": to_json(TextMessage(text)), "phone": phone, "user_id": user_id}
        ),
    )


class Rig:
    def __init__(
        self, graph: FakeGraph, delivery: Delivery, store: MemoryStore, metrics: Metrics
    ) -> None:
        self.graph, self.delivery, self.store, self.metrics = graph, delivery, store, metrics

    async def send(self, rows: list[MessageRow]) -> None:
        contacts = {r.contact for r in rows}
        await self.store.write(
            [
                Commit(
                    ConversationRow(c, "n", "f", "s", False, 1.0, {"v": 1}),
                    [r for r in rows if r.contact == c],
                )
                for c in contacts
            ]
        )
        self.delivery.enqueue(rows)
        await self.delivery.wait_empty()

    async def status_of(self, id_: str) -> MessageRow:
        rows = [m for c in ("a", "b", "c") for m in await self.store.transcript(c, 1000)]
        return next(m for m in rows if m.id == id_)


@pytest.fixture
async def rig(graph: tuple[FakeGraph, str]) -> AsyncIterator[Rig]:
    fake, url = graph
    store, metrics = MemoryStore(), Metrics()
    committer = Committer(store, metrics)
    committer.start()
    async with aiohttp.ClientSession() as session:
        sender = CloudApiSender(session, url, Secret("tok"))
        delivery = Delivery(
            sender, committer, metrics, clock=lambda: 5.0, concurrency=8, policy=lambda *a: 0.01
        )
        delivery.start()
        yield Rig(fake, delivery, store, metrics)
        await delivery.stop(1.0)
    await committer.close()


async def test_each_contacts_messages_reach_the_provider_in_order(rig: Rig) -> None:
    """With 8 workers and random provider latency, every contact's order is kept."""
    rig.graph.latency = 0.002
    rows = [row(f"{c}:{i}", c, f"{c}-{i}") for i in range(20) for c in ("a", "b", "c")]
    random.seed(7)
    await rig.send(rows)
    for contact in ("a", "b", "c"):
        got = [
            r["body"]["text"]["body"]
            for r in rig.graph.requests
            if r["body"]["text"]["body"].startswith(contact)
        ]
        assert got == [f"{contact}-{i}" for i in range(20)]
    assert rig.graph.requests[0]["auth"] == "Bearer tok"
    assert rig.graph.requests[0]["number"] == "106540352242922"


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 130429), (400, 131056), (500, 131000), (503, 131016), (500, None), (429, None)],
)
async def test_retryable_answers_are_retried(rig: Rig, status: int, code: int | None) -> None:
    error = meta_error(code, "slow down", status) if code else (status, {"oops": True})
    rig.graph.answer_next(error, error)
    await rig.send([row("m1", "a", "hello")])
    assert [r["status"] for r in rig.graph.requests] == [status, status, 200]
    m = await rig.status_of("m1")
    assert m.status == "accepted" and m.provider_id == rig.graph.requests[-1]["wamid"]
    assert rig.metrics.outbound.get("retried", str(code or status)) == 2


@pytest.mark.parametrize("code", [131047, 131026, 100, 190, 368, 131051])
async def test_permanent_errors_are_recorded_and_do_not_block_the_next_message(
    rig: Rig, code: int
) -> None:
    rig.graph.answer_next(meta_error(code, "no can do"))
    await rig.send([row("m1", "a", "first"), row("m2", "a", "second")])
    failed, sent = await rig.status_of("m1"), await rig.status_of("m2")
    assert (failed.status, failed.error_code, failed.error_title) == ("failed", code, "no can do")
    assert sent.status == "accepted"
    assert [r["body"]["text"]["body"] for r in rig.graph.requests] == ["first", "second"]
    assert rig.metrics.outbound.get("failed", str(code)) == 1


async def test_giving_up_after_many_retries_is_recorded(rig: Rig) -> None:
    from engine.delivery import MAX_ATTEMPTS

    rig.graph.answer_next(*[meta_error(131000, "unknown", 500)] * MAX_ATTEMPTS)
    await rig.send([row("m1", "a", "x")])
    m = await rig.status_of("m1")
    assert (
        m.status == "failed"
        and m.error_code == 131000
        and (m.error_title or "").startswith("gave up")
    )
    assert len(rig.graph.requests) == MAX_ATTEMPTS


async def test_unreachable_provider_is_retried(graph: tuple[FakeGraph, str]) -> None:
    """A connection refused is a retryable failure, not a lost message."""
    store, metrics = MemoryStore(), Metrics()
    committer = Committer(store, metrics)
    committer.start()
    async with aiohttp.ClientSession() as session:
        sender = CloudApiSender(session, "http://127.0.0.1:9/v25.0", Secret("tok"), timeout=1)
        with pytest.raises(RetryableDelivery):
            await sender.send(Outgoing("x", "a", "n", "1", None, TextMessage("hi")))
    await committer.close()


# --- pure parts ------------------------------------------------------------------------------


def test_request_bodies() -> None:
    """Phones go out in E.164 with '+'; a user id without phone uses recipient."""
    buttons = ButtonsMessage(
        "Pick", (Button("y", "Yes"), Button("n", "No")), header="Hi", footer="Bye"
    )
    body = graph_body(Outgoing("r:w:0", "c", "n", "15550001", "US.1", buttons))
    assert body["to"] == "+15550001" and "recipient" not in body
    assert body["biz_opaque_callback_data"] == "r:w:0"
    assert body["interactive"] == {
        "type": "button",
        "body": {"text": "Pick"},
        "header": {"type": "text", "text": "Hi"},
        "footer": {"text": "Bye"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "y", "title": "Yes"}},
                {"type": "reply", "reply": {"id": "n", "title": "No"}},
            ]
        },
    }
    listing = ListMessage("Choose", "Sizes", (Section(None, (Row("s", "Small", "for one"),)),))
    body = graph_body(Outgoing("x", "c", "n", None, "US.1", listing))
    assert body["recipient"] == "US.1" and "to" not in body
    assert body["interactive"]["action"] == {
        "button": "Sizes",
        "sections": [{"rows": [{"id": "s", "title": "Small", "description": "for one"}]}],
    }
    text = graph_body(Outgoing("x", "c", "n", "1", None, TextMessage("see https://x.y")))
    assert text["type"] == "text" and text["text"] == {
        "body": "see https://x.y",
        "preview_url": True,
    }
    with pytest.raises(PermanentDelivery):
        graph_body(Outgoing("x", "c", "n", None, None, TextMessage("nobody")))


OUTCOMES: list[tuple[int, Any, type[Exception] | str]] = [
    (200, {"messages": [{"id": "wamid.OK"}]}, "wamid.OK"),
    (200, {"messages": []}, PermanentDelivery),
    (400, meta_error(130429)[1], RetryableDelivery),
    (400, meta_error(131056)[1], RetryableDelivery),
    (400, meta_error(131047)[1], PermanentDelivery),
    (401, meta_error(190)[1], PermanentDelivery),
    (500, meta_error(131000)[1], RetryableDelivery),
    (500, meta_error(100)[1], PermanentDelivery),  # the code decides, not the HTTP status
    (502, None, RetryableDelivery),
    (429, {}, RetryableDelivery),
    (404, "not json", PermanentDelivery),
]


@pytest.mark.parametrize(("status", "data", "expected"), OUTCOMES)
def test_answers_are_classified_by_error_code(
    status: int, data: Any, expected: type[Exception] | str
) -> None:
    if isinstance(expected, str):
        assert outcome(status, data) == expected
    else:
        with pytest.raises(expected):
            outcome(status, data)


@pytest.mark.parametrize(
    ("attempt", "code", "retry_after", "jitter", "seconds"),
    [
        (1, None, None, 0.0, 0.25),
        (1, None, None, 1.0, 0.5),
        (3, None, None, 1.0, 2.0),
        (12, None, None, 1.0, 60.0),
        (1, 131056, None, 0.5, 1.0),
        (2, 131056, None, 0.5, 4.0),
        (3, 131056, None, 0.5, 16.0),
        (9, 131056, None, 0.5, 256.0),
        (1, 130429, 7.0, 0.5, 7.0),
        (1, None, 9999.0, 0.5, 300.0),
    ],
)
def test_backoff(
    attempt: int, code: int | None, retry_after: float | None, jitter: float, seconds: float
) -> None:
    """Exponential with jitter, 4^n for the per-user pair rate, Retry-After when given."""
    assert backoff(attempt, code, retry_after, jitter) == seconds
