"""The real process: SIGTERM drains within 10 s; logs mask phone numbers and hold no secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.graph import FakeGraph, meta_error
from tests.process import Server
from tests.support import ADMIN, SECRET, TOKEN, VERIFY, body, change, eventually, signed, text


@pytest.fixture
async def server(env: dict[str, str], tmp_path: Path) -> AsyncIterator[Server]:
    process = Server(env, tmp_path)
    try:
        yield process
    finally:
        process.stop_quietly()


async def post_all(url: str, docs: list[dict[str, object]]) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one(doc: dict[str, object]) -> int:
            raw, headers = signed(doc)
            async with session.post(f"{url}/webhooks/whatsapp", data=raw, headers=headers) as r:
                return r.status

        return list(await asyncio.gather(*(one(d) for d in docs)))


@pytest.mark.slow
async def test_sigterm_drains_the_outbox_and_exits_within_10s(
    server: Server, env: dict[str, str], tmp_path: Path, graph: tuple[FakeGraph, str]
) -> None:
    """With replies still queued behind a slow provider, SIGTERM sends them and exits in time."""
    fake, _ = graph
    fake.latency = 0.2  # 40 replies through 4 workers: about 2 s of outbox when the signal comes
    server._env["SEND_CONCURRENCY"] = "4"
    await server.start()
    docs = [body(change([text(f"1555000{i:04d}", f"wamid.t{i}", "menu")])) for i in range(40)]
    assert await post_all(server.url, docs) == [200] * 40
    async with aiohttp.ClientSession() as session:

        async def backlog() -> bool:
            async with session.get(f"{server.url}/metrics") as r:
                page = await r.text()
            (line,) = [x for x in page.splitlines() if x.startswith("engine_outbox_pending ")]
            return float(line.split()[1]) > 10

        await eventually(backlog)  # the outbox is far from empty when the signal comes
    seconds = await asyncio.to_thread(server.terminate)
    assert server.proc is not None and server.proc.returncode == 0
    assert seconds < 10, seconds
    assert len(fake.requests) == 40 and "stopped in" in server.stderr()
    # Nothing was left behind: a restart sends nothing more.
    again = Server(env, tmp_path, name="again")
    try:
        await again.start()
        await asyncio.sleep(0.5)
        assert len(fake.requests) == 40
    finally:
        again.stop_quietly()


@pytest.mark.slow
async def test_logs_mask_phone_numbers_and_never_print_secrets(
    server: Server, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    fake, _ = graph
    env["LOG_LEVEL"] = "DEBUG"
    server._env["LOG_LEVEL"] = "DEBUG"
    fake.answer_next(meta_error(131026, "Message undeliverable"))
    await server.start()
    statuses = await post_all(
        server.url,
        [
            body(
                change([text("15559876543", "wamid.secret1", "hello", user_id="US.5551234567890")])
            ),
            body(change([{"id": "wamid.broken", "from": "15559876543"}])),
        ],
    )
    assert statuses == [200, 200]
    async with aiohttp.ClientSession() as session:
        raw, headers = signed(body(change([text("15559876543", "wamid.x", "hi")])), secret="wrong")
        async with session.post(f"{server.url}/webhooks/whatsapp", data=raw, headers=headers) as r:
            assert r.status == 403
        await asyncio.sleep(0.5)
    server.terminate()
    output = server.stdout() + server.stderr()
    (failure,) = [
        line for line in output.splitlines() if "failed: (131026) Message undeliverable" in line
    ]
    assert "US.***7890" in failure  # the contact is named, masked
    for secret in (SECRET, TOKEN, VERIFY, ADMIN, "15559876543", "5551234567890"):
        assert secret not in output, secret
