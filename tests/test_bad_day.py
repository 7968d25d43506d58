"""A bad day against the real `python server.py`: the provider goes down, then throttles, then
the access token expires and is renewed in its file. No reply is lost or recorded as failed;
each contact's replies reach the provider in the order the flow made them; /readyz and the
metrics say what is going on while it lasts. (The same faults at full length, ten minutes of
outage and two of 429s, run on an injected clock in tests/test_delivery.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.graph import FakeGraph, meta_error
from tests.process import Server
from tests.support import ADMIN, NUMBER, body, change, eventually, signed, text

CONTACTS = [f"1555000{i:04d}" for i in range(5)]


@pytest.fixture
async def server(env: dict[str, str], tmp_path: Path) -> AsyncIterator[Server]:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    del env["WHATSAPP_ACCESS_TOKEN"]
    env["WHATSAPP_ACCESS_TOKEN_FILE"] = str(token)
    process = Server(env, tmp_path)
    try:
        yield process
    finally:
        process.stop_quietly()


class Day:
    def __init__(self, server: Server, fake: FakeGraph, session: aiohttp.ClientSession) -> None:
        self.server, self.fake, self.session = server, fake, session
        self.n = 0

    async def customers_write(self, words: str) -> None:
        """Every contact sends one message; all are accepted (200) whatever the provider does."""
        for phone in CONTACTS:
            self.n += 1
            raw, headers = signed(body(change([text(phone, f"wamid.day{self.n}", words)])))
            async with self.session.post(
                f"{self.server.url}/webhooks/whatsapp", data=raw, headers=headers
            ) as r:
                assert r.status == 200

    async def ready(self) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.server.url}/readyz") as r:
            return r.status, await r.json()

    async def metrics(self) -> str:
        async with self.session.get(f"{self.server.url}/metrics") as r:
            return await r.text()

    async def degraded(self, cause: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            status, report = await self.ready()
            assert status == 200  # degraded, never down: webhooks keep flowing
            return report if report["whatsapp"].startswith(f"degraded: {cause} ") else None

        report: dict[str, Any] = await eventually(check, timeout=20)
        return report

    async def transcript(self, phone: str) -> list[dict[str, Any]]:
        async with self.session.get(
            f"{self.server.url}/api/conversations/{phone}",
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as r:
            assert r.status == 200
            return [m for m in (await r.json())["messages"] if m["direction"] == "out"]

    async def all_delivered(self) -> bool:
        for phone in CONTACTS:
            if {m["status"] for m in await self.transcript(phone)} != {"accepted"}:
                return False
        return (await self.ready())[1]["whatsapp"] == "ok"


@pytest.mark.slow
async def test_an_outage_a_429_stream_and_a_renewed_token_lose_no_reply(
    server: Server, graph: tuple[FakeGraph, str], tmp_path: Path
) -> None:
    fake, _ = graph
    fake.token = "first-token"
    await server.start()
    async with aiohttp.ClientSession() as session:
        day = Day(server, fake, session)
        await day.customers_write("hi")
        await eventually(day.all_delivered, timeout=20)

        # 1. The provider is down (Meta's code 2).
        fake.failing = meta_error(2, "Service temporarily unavailable", 503)
        await day.customers_write("Opening hours")
        report = await day.degraded("outage")
        assert "(2) Service temporarily unavailable" in report["whatsapp"]
        assert report["store"] == "ok" and report["accepting"] is True
        await asyncio.sleep(2)  # it stays down for a while, probes keep failing
        pending = [m["status"] for p in CONTACTS for m in await day.transcript(p)]
        assert "pending" in pending and "failed" not in pending
        fake.failing = None
        await eventually(day.all_delivered, timeout=30)

        # 2. A stream of 429s, each asking for a second's patience.
        fake.failing = (*meta_error(130429, "Rate limit hit", 429), {"Retry-After": "1"})
        await day.customers_write("do you deliver?")
        await day.degraded("throttled")
        await asyncio.sleep(2)
        fake.failing = None
        await eventually(day.all_delivered, timeout=30)

        # 3. The token expires; ops renews it by rewriting the file, without a restart.
        fake.token = "second-token"
        await day.customers_write("hello again")
        report = await day.degraded("auth")
        assert "(190)" in report["whatsapp"]
        metrics = await day.metrics()
        assert f'engine_channel_paused{{cause="auth",number="{NUMBER}"}} 1.0' in metrics
        (tmp_path / "token").write_text("second-token\n")
        await eventually(day.all_delivered, timeout=40)

        # Every reply, in the flow's order per contact, accepted once; nothing failed.
        for phone in CONTACTS:
            made = [m["ref"] for m in await day.transcript(phone)]
            accepted = [
                r["body"]["biz_opaque_callback_data"]
                for r in fake.requests
                if r["wamid"] and r["body"]["to"] == f"+{phone}"
            ]
            assert accepted == made, phone
            assert len(made) >= 4
        metrics = await day.metrics()
        outbound = [x for x in metrics.splitlines() if x.startswith("engine_outbound_messages")]
        assert outbound and not [x for x in outbound if 'result="failed"' in x], outbound
        assert 'engine_channel_pauses_total{cause="outage"} 1.0' in metrics
        assert 'engine_channel_pauses_total{cause="throttled"} 1.0' in metrics
        assert 'engine_channel_pauses_total{cause="auth"} 1.0' in metrics
        assert "engine_channel_paused{" not in metrics
    server.terminate()
    log = server.stderr()
    assert "Traceback" not in log
    pauses = [line for line in log.splitlines() if " paused (" in line and "resumed" not in line]
    assert len(pauses) == 3 and log.count("resumed after") == 3, log
