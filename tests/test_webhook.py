"""The Meta webhook over HTTP: handshake, signatures, sizes, malformed bodies, 503s."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from adapters.web import ENGINE
from tests.conftest import AppFactory
from tests.fakes.graph import FakeGraph, meta_error
from tests.support import VERIFY, body, change, eventually, signed, text


async def post(client: Any, doc: dict[str, Any] | bytes, **kw: Any) -> Any:
    raw, headers = signed(doc, **kw)
    return await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)


async def test_verification_handshake(start_app: AppFactory, env: dict[str, str]) -> None:
    """Meta's GET gets the challenge back as text/plain only with the right token and mode."""
    client = await start_app(env)
    ok = await client.get(
        "/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"},
    )
    assert ok.status == 200 and await ok.text() == "1158201444"
    assert ok.content_type == "text/plain"
    for params in (
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY},
    ):
        assert (await client.get("/webhooks/whatsapp", params=params)).status == 403


async def test_handshake_refused_without_a_verify_token(
    start_app: AppFactory, env: dict[str, str]
) -> None:
    del env["WHATSAPP_VERIFY_TOKEN"]
    client = await start_app(env)
    r = await client.get(
        "/webhooks/whatsapp",
        params={"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
    )
    assert r.status == 403


async def test_signature_missing_401_wrong_403_good_200(
    start_app: AppFactory, env: dict[str, str]
) -> None:
    client = await start_app(env)
    doc = body(change([text("15550001", "wamid.1", "hi")]))
    raw = json.dumps(doc).encode()
    assert (await client.post("/webhooks/whatsapp", data=raw)).status == 401
    assert (await post(client, doc, secret="not-the-secret")).status == 403
    assert (await post(client, doc)).status == 200
    metrics = client.app[ENGINE].metrics.webhook_requests
    assert (
        metrics.get("meta", "signature_missing") == 1 and metrics.get("meta", "signature_bad") == 1
    )


async def test_every_post_is_refused_without_an_app_secret(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """Without WHATSAPP_APP_SECRET nothing can be verified, so nothing is accepted."""
    del env["WHATSAPP_APP_SECRET"]
    client = await start_app(env)
    r = await post(client, body(change([text("15550001", "wamid.1", "hi")])))
    assert r.status == 403 and "WHATSAPP_APP_SECRET" in await r.text()
    assert client.app[ENGINE].metrics.events.total() == 0


async def test_a_3mb_batch_is_accepted_and_every_item_handled(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """A 2.9 MB body (over aiohttp's 1 MiB default) with 1000 messages is acknowledged and answered."""
    fake, _ = graph
    filler = "x" * 2800
    items = [text(f"1555{i:07d}", f"wamid.big.{i}", filler) for i in range(1000)]
    doc = body(*(change(items[i : i + 100]) for i in range(0, 1000, 100)), entries=3)
    raw = json.dumps(doc).encode()
    assert 2_800_000 < len(raw) < 3_145_728
    client = await start_app(env)
    r = await post(client, raw)
    assert r.status == 200
    await eventually(lambda: len(fake.requests) >= 1000, timeout=30)
    assert len({r["body"]["to"] for r in fake.requests}) == 1000


async def test_bodies_over_the_limit_get_413(start_app: AppFactory, env: dict[str, str]) -> None:
    client = await start_app(env)
    r = await post(client, b"{" + b" " * (4 * 1024 * 1024) + b"}")
    assert r.status == 413


async def test_malformed_bodies_are_acknowledged_and_counted(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """A 4xx would make Meta retry the same bad bytes for days; we answer 200 and count."""
    fake, _ = graph
    client = await start_app(env)
    assert (await post(client, b"{not json")).status == 200
    assert (await post(client, {"entry": "nope"})).status == 200
    good = text("15550009", "wamid.good", "hello")
    mixed = body(change([{"id": "wamid.nofrom", "timestamp": "1", "type": "text"}, good]))
    assert (await post(client, mixed)).status == 200
    engine = client.app[ENGINE]
    assert engine.metrics.malformed.total() == 3
    await eventually(lambda: any(r["body"]["to"] == "+15550009" for r in fake.requests))


async def test_503_when_the_store_cannot_record(start_app: AppFactory, env: dict[str, str]) -> None:
    """If the events cannot be made durable, Meta is told to retry."""
    client = await start_app(env)
    engine = client.app[ENGINE]
    await engine.store.close()  # the disk is gone
    r = await post(client, body(change([text("15550001", "wamid.1", "hi")])))
    assert r.status == 503 and r.headers["Retry-After"] == "5"
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["store"].startswith("down")


async def test_503_while_draining(start_app: AppFactory, env: dict[str, str]) -> None:
    client = await start_app(env)
    assert (await client.get("/readyz")).status == 200
    await client.app[ENGINE].drain(1.0)
    r = await post(client, body(change([text("15550001", "wamid.1", "hi")])))
    assert r.status == 503
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["accepting"] is False
    assert (await client.get("/healthz")).status == 200


async def test_503_when_the_backlog_is_full(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """When replies pile up behind a slow provider, intake stops growing memory and says retry."""
    fake, _ = graph
    fake.latency = 0.2
    env["MAX_BACKLOG"] = "5"
    env["SEND_CONCURRENCY"] = "1"
    client = await start_app(env)
    codes = []
    for i in range(12):
        r = await post(client, body(change([text(f"1555000{i:04d}", f"wamid.bp{i}", "hi")])))
        codes.append(r.status)
        await client.app[ENGINE].actors.wait_idle()
    assert codes[:6] == [200] * 6 and 503 in codes[6:]
    refused = [i for i, c in enumerate(codes) if c == 503]
    r = await post(client, body(change([text("15559990000", "wamid.bpx", "hi")])))
    assert r.status == 503 and r.headers["Retry-After"] == "30"
    assert client.app[ENGINE].metrics.webhook_requests.get("meta", "overloaded") == len(refused) + 1
    await eventually(lambda: client.app[ENGINE].backlog == 0, timeout=10)
    again = await post(client, body(change([text("15559990000", "wamid.bpx", "hi")])))
    assert again.status == 200  # Meta's retry is taken once the backlog drained


async def test_a_paused_number_holding_many_replies_does_not_close_intake_for_the_others(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """Number 111 is down and holds more than MAX_BACKLOG replies: its own webhooks get 503 (Meta
    keeps them), the other number's are accepted and answered; SIGTERM's drain does not wait
    for what cannot drain."""
    fake, _ = graph
    fake.refuse = lambda number, _body: meta_error(2, "down", 503) if number == "111" else None
    env["MAX_BACKLOG"] = "5"
    client = await start_app(env)
    engine = client.app[ENGINE]
    codes = []
    for i in range(10):
        r = await post(
            client, body(change([text(f"1555000{i:04d}", f"w.a{i}", "hi")], number="111"))
        )
        codes.append((r.status, r.headers.get("Retry-After")))
        await engine.actors.wait_idle()
    assert engine.delivery.paused() and engine.delivery.pending > 5
    assert codes[:6] == [(200, None)] * 6 and (503, "30") in codes[6:]
    r = await post(client, body(change([text("15550001111", "w.b1", "hi")], number="222")))
    assert r.status == 200
    await eventually(lambda: any(q["number"] == "222" and q["wamid"] for q in fake.requests))
    # Held, not waited for; what a paused number holds does not make the drain a failure.
    assert await asyncio.wait_for(engine.drain(7.0), 3.0) is True
    assert engine.delivery.pending > 5
