"""Orders through the whole server: signed webhooks to the order flow, one order however often
Confirm arrives, and the admin API of orders (list, show, status moves that tell the customer)."""

from __future__ import annotations

import asyncio
import io
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import AppFactory
from tests.fakes.clock import FakeClock
from tests.fakes.graph import FakeGraph
from tests.support import body, button, change, signed, text
from tests.test_api import AUTH, Api, _text_of

PHONE = "919800000001"


class Shop(Api):
    async def settle(self) -> None:
        """Every message handled, every call ended, every reply sent (a contact's replies are
        paced on the engine's clock: it is moved on while any wait)."""
        for _ in range(200):
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
    status, cancelled = await shop.post(
        "/api/orders/1001/status", {"status": "cancelled", "reason": "out of stock"}
    )
    assert (status, cancelled["reason"]) == (200, "out of stock")
    assert (await shop.post("/api/orders/1001/status", {"status": "delivered"}))[0] == 409
    history = (await shop.get("/api/orders/1001"))[1]["history"]
    assert [h["status"] for h in history] == ["confirmed", "shipped", "cancelled"]
    # on the engine's (fake) clock, which the replies' pacing moved on a little since
    moved_at = datetime.fromisoformat(history[-1]["at"]).timestamp()
    assert shop.clock.now() - 60 < moved_at <= shop.clock.now()
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
