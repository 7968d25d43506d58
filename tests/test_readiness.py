"""/readyz reports each dependency: the store (can it write?), Redis when REDIS_URL is set, and
the WhatsApp channel, degraded (200) while a number is paused, with the cause."""

from __future__ import annotations

import io
from urllib.parse import urlsplit

import redis.asyncio as redis

from adapters.web import ENGINE
from tests.conftest import AppFactory
from tests.fakes.clock import FakeClock
from tests.fakes.graph import FakeGraph
from tests.support import NUMBER, body, change, eventually, signed, text


async def test_readyz_with_redis(
    start_app: AppFactory, env: dict[str, str], redis_url: str
) -> None:
    env["REDIS_URL"] = redis_url
    client = await start_app(env)
    r = await client.get("/readyz")
    assert r.status == 200
    assert await r.json() == {"store": "ok", "redis": "ok", "whatsapp": "ok", "accepting": True}


async def test_readyz_without_redis(start_app: AppFactory, env: dict[str, str]) -> None:
    client = await start_app(env)
    assert await (await client.get("/readyz")).json() == {
        "store": "ok",
        "whatsapp": "ok",
        "accepting": True,
    }
    assert (await client.get("/healthz")).status == 200


async def test_the_console_sender_has_no_channel_to_report(
    start_app: AppFactory, env: dict[str, str]
) -> None:
    del env["WHATSAPP_ACCESS_TOKEN"]
    client = await start_app(env)
    assert await (await client.get("/readyz")).json() == {"store": "ok", "accepting": True}


async def test_a_rejected_token_is_reported_as_degraded_and_ops_can_alert_on_it(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """While Meta refuses the token, /readyz says why with 200 (webhooks keep flowing), the
    paused gauge is 1, the reply stays pending; once Meta accepts it again, all is ok."""
    fake, _ = graph
    clock = FakeClock()
    fake.token = "someone-else's"
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]
    raw, headers = signed(body(change([text("15550001", "wamid.r1", "hi")])))
    r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert r.status == 200
    await eventually(engine.delivery.paused)

    r = await client.get("/readyz")
    report = await r.json()
    assert r.status == 200 and report["accepting"] is True and report["store"] == "ok"
    assert report["whatsapp"].startswith(f"degraded: auth on number {NUMBER} since ")
    assert "(190) Error validating access token" in report["whatsapp"]
    metrics = await (await client.get("/metrics")).text()
    assert f'engine_channel_paused{{cause="auth",number="{NUMBER}"}} 1.0' in metrics
    assert 'engine_channel_pauses_total{cause="auth"} 1.0' in metrics
    view = await engine.view(f"{NUMBER}:15550001")
    assert [m["status"] for m in view["messages"] if m["direction"] == "out"] == ["pending"]

    fake.token = None  # the token works again at Meta
    await clock.advance(30)
    await eventually(lambda: not engine.delivery.paused() and not engine.delivery.pending)
    assert (await (await client.get("/readyz")).json())["whatsapp"] == "ok"
    metrics = await (await client.get("/metrics")).text()
    assert "engine_channel_paused{" not in metrics
    assert 'engine_channel_probes_total{result="ok"} 1.0' in metrics
    view = await engine.view(f"{NUMBER}:15550001")
    assert [m["status"] for m in view["messages"] if m["direction"] == "out"] == ["accepted"]


async def test_redis_down_is_degraded_not_out_of_service(
    start_app: AppFactory, env: dict[str, str], redis_url: str
) -> None:
    """Redis is only a cache of the store: while it is away the engine reads the store, so a
    load balancer must keep sending webhooks."""
    from tests.fakes.proxy import Proxy

    parts = urlsplit(redis_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    try:
        env["REDIS_URL"] = f"redis://127.0.0.1:{proxy.port}/0"
        clock = FakeClock()
        client = await start_app(env, clock=clock)
        assert (await client.get("/readyz")).status == 200
        proxy.cut()
        r = await client.get("/readyz")
        report = await r.json()
        assert r.status == 200
        assert report["redis"].startswith("degraded: Redis unreachable")
        raw, headers = signed(body(change([text("15550000009", "wamid.r1", "hi")])))
        assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
        metrics = await (await client.get("/metrics")).text()
        assert "engine_redis_failures_total 1.0" in metrics  # one outage, one new epoch
        # Redis returns: after its 5 s pause it is written again (a new epoch).
        proxy.restore()
        assert (await (await client.get("/readyz")).json())["redis"] == "ok"
        await clock.advance(5)
        raw, headers = signed(body(change([text("15550000010", "wamid.r2", "hi")])))
        assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
        direct = redis.from_url(redis_url)
        try:
            assert [k async for k in direct.scan_iter("wa-engine:*:m:wamid.r2")]
            assert not [k async for k in direct.scan_iter("wa-engine:*:m:wamid.r1")]
        finally:
            await direct.aclose()
    finally:
        await proxy.close()


async def test_an_engine_started_while_redis_is_down_serves_and_uses_redis_once_it_answers(
    start_app: AppFactory, env: dict[str, str], redis_url: str
) -> None:
    """Redis is a cache: a restart during a Redis outage must not be an outage of its own."""
    from tests.fakes.proxy import Proxy

    parts = urlsplit(redis_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    try:
        proxy.cut()
        env["REDIS_URL"] = f"redis://127.0.0.1:{proxy.port}/0"
        clock = FakeClock()
        client = await start_app(env, clock=clock)
        r = await client.get("/readyz")
        assert r.status == 200
        assert (await r.json())["redis"].startswith("degraded: Redis unreachable")
        raw, headers = signed(body(change([text("15550000021", "wamid.d1", "hi")])))
        assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
        proxy.restore()
        await clock.advance(5)
        raw, headers = signed(body(change([text("15550000022", "wamid.d2", "hi")])))
        assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
        direct = redis.from_url(redis_url)
        try:
            assert [k async for k in direct.scan_iter("wa-engine:*:m:wamid.d2")]
        finally:
            await direct.aclose()
    finally:
        await proxy.close()
