"""kill -9 right after a Confirm, then the provider re-delivers the tap and the customer taps
again: one order, with the quoted amounts, on a real server.py (SQLite and Postgres)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.graph import FakeGraph
from tests.process import Server
from tests.support import ADMIN, body, button, change, eventually, signed, text
from tests.test_kill import postgres_database

PHONE = "919812345678"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_kill_after_confirm_and_a_redelivered_tap_make_one_order(
    env: dict[str, str], tmp_path: Path, graph: tuple[FakeGraph, str], backend: str
) -> None:
    if backend == "postgres":
        async with postgres_database() as url:
            await _run({**env, "DATABASE_URL": url}, tmp_path, graph[0])
    else:
        await _run(env, tmp_path, graph[0])


async def _run(env: dict[str, str], tmp_path: Path, fake: FakeGraph) -> None:
    env = {**env, "ENTRY_FLOW": "order"}

    async def post(session: aiohttp.ClientSession, server: Server, event: dict[str, Any]) -> None:
        raw, headers = signed(body(change([event])))
        async with session.post(f"{server.url}/webhooks/whatsapp", data=raw, headers=headers) as r:
            assert r.status == 200

    def said() -> list[str]:
        out = []
        for r in fake.requests:
            b = r["body"]
            if b.get("type") == "text":
                out.append(b["text"]["body"])
            elif b.get("type") == "interactive":
                out.append(b["interactive"]["body"]["text"])
        return out

    confirm = button(PHONE, "wamid.confirm", "confirm", "Confirm")
    async with aiohttp.ClientSession() as session:
        first = Server(env, tmp_path, name="first")
        await first.start()
        try:
            await post(session, first, text(PHONE, "wamid.1", "hi"))
            await eventually(lambda: len(said()) == 1)
            await post(session, first, button(PHONE, "wamid.2", "order", "Place an order"))
            await eventually(lambda: len(said()) == 2)
            await post(session, first, text(PHONE, "wamid.3", "cement 200\ntmt bar 12mm x 10"))
            await eventually(lambda: any("*Total: ₹16,778.52*" in s for s in said()))
            await post(session, first, confirm)  # acknowledged: durable, then killed at once
            await asyncio.to_thread(first.kill)
        finally:
            first.stop_quietly()
        second = Server(env, tmp_path, name="second")
        await second.start()
        try:
            await post(session, second, confirm)  # the provider's re-delivery of the same tap
            # When the kill came with order.place in flight (it draws the invoice's PDF), the
            # call is made again once its time runs out: within (10 s) + 5 s after it began.
            await eventually(lambda: any("is placed." in s for s in said()), timeout=45)
            await post(session, second, button(PHONE, "wamid.5", "confirm", "Confirm"))
            await eventually(lambda: any("already placed" in s for s in said()), timeout=20)
            auth = {"Authorization": f"Bearer {ADMIN}"}
            async with session.get(f"{second.url}/api/orders", headers=auth) as r:
                orders = (await r.json())["orders"]
        finally:
            second.terminate()
            second.stop_quietly()
    assert [(o["number"], o["total"], o["discount"], o["tax"]) for o in orders] == [
        (1001, "16778.52", "706.00", "3364.52")
    ]
    # One order, one number. A reply the provider took just before the kill, before the engine
    # recorded it, may go a second time (the outbox's known window, without status webhooks):
    # the same message, never a second order.
    assert {s for s in said() if "is placed." in s} == {"Thank you! Your order *1001* is placed."}
    assert {s.split("\n")[0] for s in said() if "*Invoice" in s} == {
        "*Invoice INV-1001* for order 1001"
    }
