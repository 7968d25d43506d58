"""kill -9 in the middle of a stream of webhooks, restart on the same file, several rounds:
nothing acknowledged is lost, nothing is handled twice, replies go out in order and once.

The provider posts a `sent` status webhook for each message it accepts, as Meta does, echoing
the id the engine sent: a send that a kill left in flight is recorded as accepted when that
status comes, instead of being sent again. Target: at most one duplicate per kill. Without the
status webhooks (the second test) the window no engine can close is measured instead: every
duplicate send must have been accepted just before a kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL, postgres_schema
from tests.fakes.graph import FakeGraph
from tests.process import Server
from tests.support import ADMIN, SECRET, body, change, eventually, signed, text

CONTACTS = 30
MESSAGES = 12
ROUNDS = 4
WINDOW = 0.5  # seconds: a duplicate must come from a send accepted this soon before a kill
IN_TRANSIT = 0.25  # ... or one already on the wire, that the provider read just after it


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["sqlite", "postgres", "postgres+redis"])
async def test_kill_9_loses_nothing_and_repeats_nothing(
    env: dict[str, str], tmp_path: Path, graph: tuple[FakeGraph, str], backend: str
) -> None:
    if backend.startswith("postgres"):
        async with postgres_database() as url:
            env["DATABASE_URL"] = url
            if backend.endswith("+redis"):
                env["REDIS_URL"] = TEST_REDIS_URL  # the hot tier: snapshots and seen ids
            await kill_rounds(env, tmp_path, graph, statuses=True)
    else:
        await kill_rounds(env, tmp_path, graph, statuses=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_kill_9_without_status_webhooks_repeats_only_sends_in_flight(
    env: dict[str, str], tmp_path: Path, graph: tuple[FakeGraph, str]
) -> None:
    """No status webhook ever comes: after the reconcile period the sends a kill left in
    flight go again; only those can reach the provider twice."""
    env["SEND_RECONCILE"] = "2s"
    await kill_rounds(env, tmp_path, graph, statuses=False)


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A DATABASE_URL on the test Postgres, in a schema of its own, dropped afterwards."""
    async with postgres_schema() as schema:
        sep = "&" if "?" in TEST_DATABASE_URL else "?"
        yield f"{TEST_DATABASE_URL}{sep}schema={schema}"


async def kill_rounds(
    env: dict[str, str], tmp_path: Path, graph: tuple[FakeGraph, str], *, statuses: bool
) -> None:
    fake, _ = graph
    fake.latency = 0.02  # a slow provider: replies queue up, so each kill finds a non-empty outbox
    concurrency = int(env.get("SEND_CONCURRENCY", "32"))  # the default: 32 sends in flight
    rng = random.Random(int(os.environ.get("KILL_TEST_SEED", "20261122")))
    phones = [f"1555{c:07d}" for c in range(CONTACTS)]
    plan = {p: [f"wamid.{p}.{i}" for i in range(MESSAGES)] for p in phones}
    acked: set[str] = set()
    kills: list[float] = []
    backlog_at_kill: list[float] = []
    listening = [""]  # where the engine listens now: the fake's status webhooks go there
    async with aiohttp.ClientSession() as session:
        if statuses:
            fake.send_statuses(session, lambda: listening[0], SECRET)
        for round_ in range(ROUNDS + 1):
            server = Server(env, tmp_path, name=f"round{round_}")
            await server.start()
            listening[0] = server.url
            last = round_ == ROUNDS

            async def converse(phone: str, server: Server = server) -> None:
                for i, wamid in enumerate(plan[phone]):
                    if wamid in acked and rng.random() > 0.15:
                        continue  # Meta retries what was not acknowledged, and now and then what was
                    raw, headers = signed(
                        body(change([text(phone, wamid, "menu", ts=1_750_000_000 + i)]))
                    )
                    try:
                        async with session.post(
                            f"{server.url}/webhooks/whatsapp", data=raw, headers=headers
                        ) as r:
                            if r.status != 200:
                                return
                    except aiohttp.ClientError:
                        return  # killed under us: this one was not acknowledged
                    acked.add(wamid)

            streams = asyncio.gather(*(converse(p) for p in phones))
            try:
                if last:
                    await streams
                    await fake.statuses_posted()
                    while await metric(
                        session, server.url, "engine_outbox_pending"
                    ) or await metric(session, server.url, "engine_mailbox_depth"):
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.2)
                    transcripts = {}
                    for phone in phones:
                        async with session.get(
                            f"{server.url}/api/conversations/{phone}",
                            headers={"Authorization": f"Bearer {ADMIN}"},
                        ) as r:
                            assert r.status == 200
                            transcripts[phone] = (await r.json())["messages"]
                    server.terminate()
                else:
                    await asyncio.sleep(rng.uniform(0.4, 0.9))
                    backlog_at_kill.append(
                        await metric(session, server.url, "engine_outbox_pending")
                    )
                    await asyncio.to_thread(server.kill)  # keep serving the fake meanwhile
                    kills.append(time.time())
                    await streams
            finally:
                server.stop_quietly()

    # 1. Every message was eventually acknowledged, and each is in its transcript once, in order.
    assert acked == {w for ws in plan.values() for w in ws}
    for phone in phones:
        inbound = [m["id"] for m in transcripts[phone] if m["direction"] == "in"]
        assert inbound == plan[phone], phone
        # 2. Every message got its reply, produced in order, accepted by the provider.
        outbound = [m for m in transcripts[phone] if m["direction"] == "out"]
        assert [m["ref"] for m in outbound] == [f"r:{w}:0" for w in plan[phone]], phone
        assert all(m["status"] in ("accepted", "sent") and m["id"] for m in outbound), phone
        # 3. The provider saw them in that order (first copies).
        seen: list[str] = []
        for request in fake.requests:
            ref = request["body"]["biz_opaque_callback_data"]
            if request["body"]["to"] == f"+{phone}" and ref not in seen:
                seen.append(ref)
        assert seen == [m["ref"] for m in outbound], phone

    # 4. Nothing sent twice, except inside the documented window: the provider had the request
    #    when the process died (it was in flight, at most SEND_CONCURRENCY of them), so the
    #    engine never learned that it was accepted.
    copies = Counter(r["body"]["biz_opaque_callback_data"] for r in fake.requests)
    duplicates = {ref: n for ref, n in copies.items() if n > 1}
    for ref in duplicates:
        first = min(
            r["received"] for r in fake.requests if r["body"]["biz_opaque_callback_data"] == ref
        )
        # In flight at a kill: received before it, or just after it (already on the wire).
        assert any(-IN_TRANSIT < k - first < WINDOW for k in kills), (ref, first, kills)
    repeated = sum(n - 1 for n in duplicates.values())
    # With the status webhooks a send in flight at a kill is claimed, not sent again: at most
    # one duplicate per kill. Without them, at most every send that was in flight.
    assert repeated <= len(kills) * (1 if statuses else concurrency), duplicates
    assert sum(backlog_at_kill) > 0, backlog_at_kill  # the kills did hit a non-empty outbox
    print(
        f"\nkill test ({'with' if statuses else 'without'} status webhooks): {len(kills)} kills, "
        f"outbox backlog at kill {backlog_at_kill}, {len(fake.requests)} sends for "
        f"{len(copies)} replies, {repeated} duplicates"
    )


FLOW = """
start: ask
states:
  ask:
    say: Order?
    on:
      - text: order
        go: place
    timeout:
      - after: 4s
        say: Reminder.
  place:
    action: http
    with: {url: "<endpoint>/orders", body: {phone: "{phone}"}}
    within: 5s
    save: {order: id}
    on_done: placed
    on_error: failed
  placed:
    say: "Placed {order}."
    end: true
  failed:
    say: "Failed: {= error.kind}."
    end: true
"""


class Business:
    """The system behind the http action: slow to answer, so calls are in flight at a kill."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []  # (idempotency key, phone, when)
        self.delay = 1.5

    async def handle(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.calls.append((request.headers["Idempotency-Key"], data["phone"], time.time()))
        await asyncio.sleep(self.delay)
        return web.json_response({"id": f"BP-{data['phone'][-3:]}"})


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_kill_9_with_timers_pending_and_actions_in_flight(
    env: dict[str, str], tmp_path: Path, graph: tuple[FakeGraph, str]
) -> None:
    """Every due timer fires once after the restart; every call cut by the kill is made again
    with the same idempotency key, and its reply goes out once."""
    fake, _ = graph
    business = Business()
    app = web.Application()
    app.router.add_post("/orders", business.handle)
    endpoint = TestServer(app)
    await endpoint.start_server()
    flows = tmp_path / "flows"
    flows.mkdir()
    url = str(endpoint.make_url("")).rstrip("/")
    (flows / "shop.yaml").write_text(FLOW.lstrip("\n").replace("<endpoint>", url))
    env = {**env, "FLOWS_DIR": str(flows), "ENTRY_FLOW": "shop"}
    ordering = [f"1555100{c:04d}" for c in range(8)]
    waiting = [f"1555200{c:04d}" for c in range(8)]

    async def send(session: aiohttp.ClientSession, server: Server, phone: str, words: str) -> None:
        raw, headers = signed(body(change([text(phone, f"w.{phone}.{words}", words)])))
        async with session.post(f"{server.url}/webhooks/whatsapp", data=raw, headers=headers) as r:
            assert r.status == 200

    def said(phone: str) -> list[str]:
        return [
            r["body"]["text"]["body"]
            for r in fake.requests
            if r["body"]["to"] == f"+{phone}" and r["body"]["type"] == "text"
        ]

    try:
        async with aiohttp.ClientSession() as session:
            first = Server(env, tmp_path, name="first")
            await first.start()
            try:
                for phone in ordering + waiting:
                    await send(session, first, phone, "hi")
                await eventually(lambda: all(said(p) == ["Order?"] for p in ordering + waiting))
                for phone in ordering:
                    await send(session, first, phone, "order")
                await eventually(lambda: len(business.calls) == len(ordering))
                assert not any(said(p)[1:] for p in ordering + waiting)  # nothing due yet
                await asyncio.to_thread(first.kill)  # calls in flight, reminders pending
                killed = time.time()
            finally:
                first.stop_quietly()
            second = Server(env, tmp_path, name="second")
            await second.start()
            try:
                await eventually(
                    lambda: all(len(said(p)) == 2 for p in ordering + waiting), timeout=30
                )
                await asyncio.sleep(1.0)  # anything repeated would arrive by now
            finally:
                second.terminate()
                second.stop_quietly()
    finally:
        await endpoint.close()

    for phone in waiting:  # the reminder fell due once, across the kill
        assert said(phone) == ["Order?", "Reminder."], phone
    for phone in ordering:
        assert said(phone) == ["Order?", f"Placed BP-{phone[-3:]}."], phone
        keys = [k for k, p, _ in business.calls if p == phone]
        assert len(keys) == 2 and keys[0] == keys[1], (phone, keys)  # made again, same key
    assert all(at > killed for _k, _p, at in business.calls[len(ordering) :])
    print(
        f"\nkill test with timers and actions: {len(business.calls)} calls for"
        f" {len(ordering)} orders, {len(waiting)} reminders once each"
    )
