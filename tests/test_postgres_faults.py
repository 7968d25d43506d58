"""Postgres failing under a running engine, through a TCP proxy that really cuts the
connections: webhooks answer 503 (never 200 for what is not durable), /readyz says so, and
when Postgres is back the engine serves again by itself, with every acknowledged message
handled once."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from adapters.stores.postgres import TIMEOUT
from adapters.web import ENGINE
from tests.conftest import TEST_DATABASE_URL, AppFactory, postgres_schema, require_postgres
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
    """Postgres stops answering while actors are writing the steps of twenty new contacts, and
    twenty more webhooks come at once: each is answered (503) within one of the store's
    timeouts (a transaction cut mid-way is not rolled back over the stalled session, which
    would take a second timeout), none is left hanging, and none is 200."""
    proxy, url = proxied
    env["DATABASE_URL"] = url
    client = await start_app(env, clock=FakeClock(now=time.time()))
    assert set((await _stream(client, range(80, 100), "t")).values()) == {200}
    proxy.stall()  # the actors' transactions are under way
    started = time.monotonic()
    statuses = await asyncio.wait_for(_stream(client, range(100, 120), "t"), timeout=10)
    assert set(statuses.values()) == {503}
    assert time.monotonic() - started < TIMEOUT + 2


async def test_after_a_partition_the_engine_takes_its_lock_back_from_its_own_old_session(
    proxied: tuple[Proxy, str],
) -> None:
    """Over a partitioned network the engine gives up its sessions, but Postgres never hears
    of it: the old session lives on, holding the engine's advisory lock. When the network
    heals, the engine ends that session (its own: same pid, same start) and writes again,
    instead of refusing to write as if another engine held the schema."""
    from adapters.stores.postgres import PostgresStore
    from engine.errors import StoreUnavailable
    from engine.ports import Accept, JournalEntry

    proxy, url = proxied
    store = PostgresStore.from_url(url)
    await store.open()
    try:

        def accept(i: int) -> Accept:
            return Accept(journal=[JournalEntry("n:1", f"wamid.p{i}", {"i": i}, 1.0)])

        await store.write([accept(0)])
        assert store._session is not None
        old_pid = store._session[0]
        proxy.stall()
        for i in (1, 2):  # the pool's session times out, then the lock's session
            with pytest.raises(StoreUnavailable):
                await store.write([accept(i)])
        proxy.restore()
        started = time.monotonic()
        (result,) = await store.write([accept(3)])
        assert result is not None and len(result.entries) == 1
        assert time.monotonic() - started < 2
        assert store._session[0] != old_pid
        direct = await asyncpg.connect(TEST_DATABASE_URL)
        try:
            alive = await direct.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", old_pid
            )
        finally:
            await direct.close()
        assert alive == 0
    finally:
        await store.close()


async def test_a_commit_whose_answer_was_lost_is_still_handled_once_and_in_order(
    start_app: AppFactory,
    env: dict[str, str],
    proxied: tuple[Proxy, str],
    graph: tuple[Any, str],
) -> None:
    """The connection fails after Postgres committed a webhook's events but before it said
    so: the webhook was answered 503, yet its message is in the journal. Once Postgres answers
    again the engine looks the failed write up and hands the message to its conversation
    (without waiting for Meta's retry, which is then a duplicate); until then the contact's
    later messages wait (503), so none is handled ahead of it."""
    proxy, url = proxied
    fake = graph[0]
    env["DATABASE_URL"] = url
    clock = FakeClock(now=time.time())
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]

    async def post(wamid: str, words: str) -> int:
        raw, headers = signed(body(change([text("15550000077", wamid, words)])))
        r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
        return r.status

    def replies(wamid: str) -> list[str]:
        return [
            r["body"]["biz_opaque_callback_data"]
            for r in fake.requests
            if r["body"]["biz_opaque_callback_data"].startswith(f"r:{wamid}:")
        ]

    assert await post("wamid.l1", "hi") == 200
    await eventually(lambda: replies("wamid.l1"))
    # Its outcome recorded too: otherwise that write's COMMIT is the one whose answer is lost,
    # and the webhook's write, queued behind it, never reaches Postgres.
    await eventually(lambda: engine.delivery.pending == 0)
    proxy.lose_commit_answers()
    assert await post("wamid.l2", "hello again") == 503  # after the store's timeout
    proxy.restore()
    assert await post("wamid.l3", "and again") == 503  # l2 has not been looked up yet

    async def answered() -> bool:
        await clock.advance(1)
        return bool(replies("wamid.l2"))

    await eventually(answered)  # without Meta's retry
    assert await post("wamid.l2", "hello again") == 200  # Meta's retry: a duplicate now
    assert await post("wamid.l3", "and again") == 200
    await eventually(lambda: replies("wamid.l3"))
    await engine.actors.wait_idle()
    await eventually(lambda: engine.delivery.pending == 0)
    sent = [r["body"]["biz_opaque_callback_data"] for r in fake.requests]
    assert len(sent) == len(set(sent))  # no reply sent twice
    key = engine.directory.lookup(NUMBER, "15550000077")
    assert key is not None
    messages = (await engine.view(key))["messages"]
    assert [m["id"] for m in messages if m["direction"] == "in"] == [
        "wamid.l1",
        "wamid.l2",
        "wamid.l3",
    ]


async def test_an_outage_with_no_traffic_is_logged_and_counted_by_readiness(
    start_app: AppFactory,
    env: dict[str, str],
    proxied: tuple[Proxy, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No webhook, no write: readiness's probe is what meets the outage. It is said once
    (ERROR) and counted, and its end is said (WARNING), as for an outage that writes meet."""
    proxy, url = proxied
    env["DATABASE_URL"] = url
    clock = FakeClock(now=time.time())
    client = await start_app(env, clock=clock)
    metrics = await (await client.get("/metrics")).text()
    assert "engine_store_write_failures_total 0.0" in metrics  # exported before any outage
    proxy.cut()
    for _ in range(3):
        assert (await client.get("/readyz")).status == 503
    proxy.restore()

    async def ready() -> bool:
        await clock.advance(1)  # the store's probe
        return (await client.get("/readyz")).status == 200

    await eventually(ready)
    metrics = await (await client.get("/metrics")).text()
    assert "engine_store_write_failures_total 1.0" in metrics
    assert caplog.text.count("the store cannot write") == 1
    assert "the store writes again" in caplog.text
