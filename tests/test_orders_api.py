"""Orders through the whole server: signed webhooks to the order flow, one order however often
Confirm arrives, and the admin API of orders (list, show, status moves that tell the customer)."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime
from typing import Any

import pytest
from pypdf import PdfReader

from tests.conftest import AppFactory
from tests.fakes.clock import FakeClock
from tests.fakes.graph import FakeGraph
from tests.support import body, button, change, signed, text
from tests.test_api import AUTH, Api, _text_of

PHONE = "919800000001"


class Shop(Api):
    async def settle(self) -> None:
        """Every message handled, every call ended, every reply sent (a contact's replies are
        paced on the engine's clock: it is moved on while any wait). An action in flight (the
        invoice's PDF is drawn in a thread) is waited for in real time, up to 20 s."""
        for _ in range(4000):
            await self.engine.actors.wait_idle()
            if self.engine.delivery.pending:
                await self.clock.advance(1)
                continue
            await self.engine.delivery.wait_empty()
            if self.engine.calls.in_flight == 0 and self.engine.actors.depth == 0:
                return
            await asyncio.sleep(0.005)

    async def send(self, event: dict[str, Any]) -> list[str]:
        before = len(self.fake.requests)
        raw, headers = signed(body(change([event])))
        r = await self.client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
        assert r.status == 200
        await self.settle()
        return [
            _text_of(r["body"])
            for r in self.fake.requests[before:]
            if r["body"].get("type") in ("text", "interactive")
        ]


@pytest.fixture
async def shop(start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]) -> Shop:
    env["ENTRY_FLOW"] = "order"
    clock = FakeClock()
    return Shop(await start_app(env, clock=clock), graph[0], clock)


async def place(
    shop: Shop, phone: str = PHONE, order: str = "Cement x 100, sand 20 bags"
) -> list[str]:
    await shop.send(text(phone, f"{phone}.1", "hi"))
    await shop.send(button(phone, f"{phone}.2", "order", "Place an order"))
    said = await shop.send(text(phone, f"{phone}.3", order))
    assert any("*Total:" in s for s in said), said
    return await shop.send(button(phone, f"{phone}.4", "confirm", "Confirm"))


async def test_a_confirm_repeated_every_way_makes_one_order(shop: Shop) -> None:
    said = await place(shop)
    assert any("Your order *1001* is placed." in s for s in said)
    assert any("*Invoice INV-1001*" in s and "*Total: ₹7,292.50*" in s for s in said)
    # the provider re-delivers the tap (same id): dropped; a second tap of the button: same order
    assert await shop.send(button(PHONE, f"{PHONE}.4", "confirm", "Confirm")) == []
    again = await shop.send(button(PHONE, f"{PHONE}.5", "confirm", "Confirm"))
    assert any("already placed" in s for s in again)
    status, listed = await shop.get("/api/orders")
    assert status == 200 and [o["number"] for o in listed["orders"]] == [1001]
    order = listed["orders"][0]
    assert (order["subtotal"], order["discount"], order["tax"], order["total"]) == (
        "5850.00",
        "0.00",
        "1442.50",
        "7292.50",
    )
    assert order["lines"] == [
        {
            "sku": "CEM-OPC53",
            "name": "Cement OPC 53 grade",
            "quantity": "100",
            "unit": "bag",
            "price": "50.00",
            "line_total": "5000.00",
        },
        {
            "sku": "SAND-R",
            "name": "River sand",
            "quantity": "20",
            "unit": "bag",
            "price": "42.50",
            "line_total": "850.00",
        },
    ]
    assert (order["currency"], order["invoice"], order["status"]) == (
        "INR",
        "INV-1001",
        "confirmed",
    )
    assert (await shop.get("/api/orders/1001"))[1]["contact"] == order["contact"]


async def test_status_moves_forward_and_tells_the_customer(shop: Shop) -> None:
    await place(shop)
    before = len(shop.fake.requests)
    status, moved = await shop.post("/api/orders/1001/status", {"status": "shipped"})
    assert (status, moved["status"], moved["told"]) == (200, "shipped", True)
    told = [_text_of(r["body"]) for r in shop.fake.requests[before:]]
    assert told == ["Order 1001 (₹7,292.50) is on its way."]
    # the same move again: no move, nobody told twice
    assert (await shop.post("/api/orders/1001/status", {"status": "shipped"}))[1]["told"] is False
    status, refused = await shop.post("/api/orders/1001/status", {"status": "processing"})
    assert status == 409 and "cannot go back" in refused["error"]
    assert (await shop.post("/api/orders/1001/status", {"status": "cancelled"}))[
        0
    ] == 400  # no reason
    asked_at = shop.clock.now()
    status, cancelled = await shop.post(
        "/api/orders/1001/status", {"status": "cancelled", "reason": "out of stock"}
    )
    answered_at = shop.clock.now()
    assert (status, cancelled["reason"]) == (200, "out of stock")
    assert (await shop.post("/api/orders/1001/status", {"status": "delivered"}))[0] == 409
    history = (await shop.get("/api/orders/1001"))[1]["history"]
    assert [h["status"] for h in history] == ["confirmed", "shipped", "cancelled"]
    # on the engine's (fake) clock, which the replies' pacing moves on while the API answers
    moved_at = datetime.fromisoformat(history[-1]["at"]).timestamp()
    assert asked_at <= moved_at <= answered_at
    assert history[-1]["reason"] == "out of stock"
    # the customer asks in the conversation: the status as it is now
    await shop.send(text(PHONE, "w.t1", "menu"))
    await shop.send(button(PHONE, "w.t2", "track", "Track my order"))
    said = await shop.send(text(PHONE, "w.t3", "1001"))
    assert "Order 1001 (₹7,292.50) is cancelled. Reason: out of stock" in said


async def test_listing_filters_and_bad_requests(shop: Shop) -> None:
    await place(shop)
    other = "919800000002"
    await shop.send(text(other, "o.1", "hi"))
    await shop.send(button(other, "o.2", "order", "Place an order"))
    await shop.send(text(other, "o.3", "sand 2"))  # a draft, not placed
    assert [o["number"] for o in (await shop.get("/api/orders"))[1]["orders"]] == [1001]
    drafts = (await shop.get("/api/orders", status="draft"))[1]["orders"]
    assert [(o["number"], o["total"]) for o in drafts] == [(None, "89.25")]
    assert [o["number"] for o in (await shop.get("/api/orders", contact=PHONE))[1]["orders"]] == [
        1001
    ]
    assert (await shop.get("/api/orders", contact=other))[1]["orders"] == []
    assert (await shop.get("/api/orders", contact="15550009999"))[1]["orders"] == []
    assert (await shop.get("/api/orders", status="confirmed", limit="1"))[1]["orders"][0][
        "number"
    ] == 1001
    assert (await shop.get("/api/orders", status="lost"))[0] == 400
    assert (await shop.get("/api/orders", limit="many"))[0] == 400
    assert (await shop.get("/api/orders/9999"))[0] == 404
    assert (await shop.get("/api/orders/1e3"))[0] == 404
    for bad in (None, [], {"status": 7}, {"status": "shipped", "reason": ["x"]}):
        assert (await shop.post("/api/orders/1001/status", bad))[0] == 400
    assert (await shop.post("/api/orders/1001/status", {"status": "confirmed"}))[0] == 409
    assert (await shop.post("/api/orders/1001/status", {"status": "SHIPPED"}))[0] == 400
    status, cancelled = await shop.post(
        "/api/orders/1001/status", {"status": "cancelled", "reason": "out\nof\x00 stock\x1b[2J"}
    )
    assert (status, cancelled["reason"]) == (200, "out of stock [2J")
    assert (await shop.post("/api/orders/77/status", {"status": "shipped"}))[0] == 404
    r = await shop.client.post("/api/orders/1001/status", data=b"\xff{", headers=AUTH)
    assert r.status == 400
    huge = b'{"status": "shipped", "reason": "' + b"x" * (2 << 20) + b'"}'
    r = await shop.client.post("/api/orders/1001/status", data=io.BytesIO(huge), headers=AUTH)
    assert r.status == 413  # the admin API's body limit, as for agent replies
    assert (await shop.client.get("/api/orders")).status == 401


async def test_the_invoice_goes_as_a_pdf_and_payments_are_counted_once_with_a_receipt(
    shop: Shop,
) -> None:
    await place(shop)
    # the PDF was uploaded to the media endpoint and sent as a document, right after the text
    [upload] = shop.fake.uploads
    assert upload["content_type"] == "application/pdf" and upload["bytes"].startswith(b"%PDF-")
    assert "₹7,292.50" in _pdf_text(upload["bytes"])
    [document] = [r["body"] for r in shop.fake.requests if r["body"].get("type") == "document"]
    assert document["document"]["filename"] == "Invoice INV-1001.pdf"
    # the invoice in the admin API, by either number, as JSON and as its PDF
    status, invoice = await shop.get("/api/invoices/INV-1001")
    assert status == 200 and (await shop.get("/api/invoices/1001"))[1] == invoice
    assert (invoice["status"], invoice["total"], invoice["paid"], invoice["balance"]) == (
        "unpaid",
        "7292.50",
        "0.00",
        "7292.50",
    )
    r = await shop.client.get("/api/invoices/INV-1001.pdf", headers=AUTH)
    assert r.status == 200 and r.content_type == "application/pdf"
    assert "Invoice INV-1001" in _pdf_text(await r.read())
    assert (await shop.client.get("/api/invoices/1001.pdf")).status == 401  # no token
    for missing in ("1002", "INV-9", "abc.pdf", "1" * 40):
        assert (await shop.get(f"/api/invoices/{missing}"))[0] == 404
    # a payment in part: 201, and the customer's receipt
    before = len(shop.fake.requests)
    pay = "/api/invoices/INV-1001/payments"
    status, paid = await shop.post(pay, {"amount": "5000", "reference": "UTR 402913"})
    await shop.settle()
    assert (status, paid["status"], paid["balance"], paid["told"]) == (
        201,
        "partly paid",
        "2292.50",
        True,
    )
    told = [_text_of(r["body"]) for r in shop.fake.requests[before:]]
    assert told == [
        "Thank you! We received ₹5,000.00 for invoice INV-1001 (order 1001, reference"
        " UTR 402913). Still to pay: ₹2,292.50."
    ]
    # the same reference again: counted once, no second receipt
    status, again = await shop.post(pay, {"amount": "5000.00", "reference": "UTR 402913"})
    await shop.settle()
    assert (status, again["duplicate"], again["balance"]) == (200, True, "2292.50")
    assert len(shop.fake.requests) == before + 1
    for wrong, code in (
        ({"amount": "2292.51", "reference": "UTR 2"}, 409),  # more than is owed
        ({"amount": "100", "reference": "UTR 402913"}, 409),  # a used reference, another amount
        ({"amount": "-1", "reference": "UTR 3"}, 400),
        ({"amount": "1.001", "reference": "UTR 3"}, 400),
        ({"amount": "10", "reference": ""}, 400),
        ({"amount": "10"}, 400),
        ({"reference": "UTR 3"}, 400),
    ):
        status, refused = await shop.post(pay, wrong)
        assert status == code, (wrong, refused)
        assert refused["error"]
    assert (await shop.post("/api/invoices/1002/payments", {"amount": "1", "reference": "x"}))[
        0
    ] == 404
    status, full = await shop.post(pay, {"amount": 2292.5, "reference": "UTR 2"})
    assert (status, full["status"], full["balance"]) == (201, "paid", "0.00")
    assert [p["amount"] for p in full["payments"]] == ["5000.00", "2292.50"]
    record = await shop.engine.store.record("order", "1001")
    assert record is not None and record.due is None  # paid: no reminder left


async def test_a_cancelled_order_takes_no_payment_and_gets_no_reminder(shop: Shop) -> None:
    await place(shop)
    record = await shop.engine.store.record("order", "1001")
    assert record is not None and record.due is not None
    await shop.post("/api/orders/1001/status", {"status": "cancelled", "reason": "no stock"})
    record = await shop.engine.store.record("order", "1001")
    assert record is not None and record.due is None
    status, refused = await shop.post(
        "/api/invoices/1001/payments", {"amount": "1", "reference": "x"}
    )
    assert status == 409 and "cancelled" in refused["error"]
    assert (await shop.get("/api/invoices/1001"))[1]["status"] == "cancelled"


def _pdf_text(data: bytes) -> str:
    return "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)
