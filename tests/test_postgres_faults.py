"""Postgres failing under a running engine, through a TCP proxy that really cuts the
connections: webhooks answer 503 (never 200 for what is not durable), /readyz says so, and
when Postgres is back the engine serves again by itself, with every acknowledged message
handled once."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from adapters.stores.postgres import TIMEOUT
from adapters.web import ENGINE
from tests.conftest import AppFactory, postgres_schema, require_postgres
from tests.fakes.clock import FakeClock
from tests.fakes.proxy import Proxy
from tests.support import NUMBER, body, change, eventually, signed, text


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[Proxy, str]]:
    """A proxy in front of the test Postgres, and a DATABASE_URL (own schema) through it."""
    parts = urlsplit(await require_postgres())
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        async with postgres_schema() as schema:
            netloc = f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"
            yield proxy, parts._replace(netloc=netloc, query=f"schema={schema}").geturl()
    finally:
        await proxy.close()


def webhook(phone: str, wamid: str) -> tuple[bytes, dict[str, str]]:
    return signed(body(change([text(phone, wamid, "hello")])))


async def test_postgres_down_means_503_then_service_resumes_by_itself(
    start_app: AppFactory, env: dict[str, str], proxied: tuple[Proxy, str]
) -> None:
    proxy, url = proxied
    env["DATABASE_URL"] = url
    clock = FakeClock(now=time.time())
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]
    raw, headers = webhook("15550000001", "wamid.before")
    assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200

    proxy.cut()
    started = time.monotonic()
    raw, headers = webhook("15550000002", "wamid.during")
    r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert r.status == 503 and r.headers["Retry-After"]
    assert time.monotonic() - started < 5  # refused at once, not after a long hang
    r = await client.get("/readyz")
    assert r.status == 503
    assert (await r.json())["store"].startswith("down: ")

    proxy.restore()
    for _ in range(50):  # the failure is remembered a while; the probe then passes again
        await clock.advance(5)
        if (await client.get("/readyz")).status == 200:
            break
    assert (await client.get("/readyz")).status == 200
    # Meta retries what was refused: it is accepted now, and handled once.
    r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert r.status == 200
    await engine.actors.wait_idle()
    await eventually(lambda: engine.delivery.pending == 0)
    assert await engine.store.unhandled() == []
    for phone, wamid in (("15550000001", "wamid.before"), ("15550000002", "wamid.during")):
        key = engine.directory.lookup(NUMBER, phone)
        assert key is not None
        messages = (await engine.view(key))["messages"]
        assert [m["id"] for m in messages if m["direction"] == "in"] == [wamid]
        assert len([m for m in messages if m["direction"] == "out"]) == 1


async def test_a_stalled_postgres_still_gets_every_webhook_answered(
    start_app: AppFactory, env: dict[str, str], proxied: tuple[Proxy, str]
) -> None:
    """Connections stay open and nothing comes back: each webhook is answered within the
    store's statement timeout, with 503; service resumes when Postgres answers again."""
    proxy, url = proxied
    env["DATABASE_URL"] = url
    clock = FakeClock(now=time.time())  # the engine's; asyncpg's timeouts run in real time
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]
    proxy.stall()
    started = time.monotonic()
    raw, headers = webhook("15550000003", "wamid.stalled")
    r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    waited = time.monotonic() - started
    assert r.status == 503, await r.text()
    assert waited < TIMEOUT + 3, waited
    # Moments later a retry is refused at once: it does not wait out the timeout again.
    started = time.monotonic()
    r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert r.status == 503 and time.monotonic() - started < 1
    proxy.restore()
    await clock.advance(11)  # the failure is old: the next webhook tries the store again
    for _ in range(50):
        r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
        if r.status == 200:
            break
        await clock.advance(11)
        await asyncio.sleep(0.1)
    assert r.status == 200
    await engine.actors.wait_idle()
    key = engine.directory.lookup(NUMBER, "15550000003")
    assert key is not None
    messages = (await engine.view(key))["messages"]
    assert [m["id"] for m in messages if m["direction"] == "in"] == ["wamid.stalled"]


async def _stream(client: object, contacts: range, tag: str) -> dict[int, int]:
    """One webhook per contact, all at once; each contact's answer status."""

    async def one(i: int) -> tuple[int, int]:
        raw, headers = webhook(f"1555100{i:04d}", f"wamid.{tag}.{i}")
        r = await client.post(  # type: ignore[attr-defined]
            "/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers
        )
        return i, r.status

    return dict(await asyncio.gather(*(one(i) for i in contacts)))


async def test_an_outage_in_the_middle_of_a_stream_loses_nothing_and_repeats_nothing(
    start_app: AppFactory, env: dict[str, str], proxied: tuple[Proxy, str]
) -> None:
    """Postgres is cut while webhooks are arriving and actors are writing their steps: each
    webhook is answered 200 or 503, nothing else; once Postgres is back, Meta's retries of the
    503s are taken, and every contact has its message once and its reply once."""
    proxy, url = proxied
    env["DATABASE_URL"] = url
    clock = FakeClock(now=time.time())
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]
    first = asyncio.create_task(_stream(client, range(0, 30), "s"))
    await eventually(lambda: engine.metrics.commits.total() >= 2, interval=0.001)
    proxy.cut()  # mid-stream: some webhooks and actor steps are in flight
    statuses = await first
    statuses.update(await _stream(client, range(30, 60), "s"))  # while Postgres is away
    assert set(statuses.values()) <= {200, 503}, statuses
    assert [statuses[i] for i in range(30, 60)] == [503] * 30  # never 200 for what is not durable
    assert (await client.get("/readyz")).status == 503
    proxy.restore()
    for _ in range(100):  # the store's backoff and the 10 s memory run on the engine's clock
        await clock.advance(11)
        if (await client.get("/readyz")).status == 200:
            break
    refused = [i for i, status in statuses.items() if status != 200]
    for _ in range(20):  # Meta sends what was refused again
        again = await _stream(client, refused, "s")
        refused = [i for i, status in again.items() if status != 200]
        if not refused:
            break
        await clock.advance(11)
    assert refused == []

    async def settled() -> bool:
        await clock.advance(11)
        busy = engine.backlog or engine.delivery.pending
        return not busy and await engine.store.unhandled() == []

    await eventually(settled)
    for i in range(60):
        key = engine.directory.lookup(NUMBER, f"1555100{i:04d}")
        assert key is not None
        messages = (await engine.view(key))["messages"]
        assert [m["id"] for m in messages if m["direction"] == "in"] == [f"wamid.s.{i}"]
        assert len([m for m in messages if m["direction"] == "out"]) == 1, messages


async def test_a_stall_under_load_answers_every_webhook_in_time(
    start_app: AppFactory, env: dict[str, str], proxied: tuple[Proxy, str]
) -> None:
    """Twenty webhooks at once into a Postgres that stopped answering: each is answered (503)
    within the store's timeout, none is left hanging, and none is 200."""
    proxy, url = proxied
    env["DATABASE_URL"] = url
    client = await start_app(env, clock=FakeClock(now=time.time()))
    proxy.stall()
    started = time.monotonic()
    statuses = await asyncio.wait_for(_stream(client, range(100, 120), "t"), timeout=10)
    assert set(statuses.values()) == {503}
    assert time.monotonic() - started < TIMEOUT + 3
