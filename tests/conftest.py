"""Fixtures: a fake Graph API, an engine app wired to it, and the real Postgres and Redis.

Tests that need Postgres or Redis read TEST_DATABASE_URL / TEST_REDIS_URL. When a service is
unreachable they fail under CI=true and are skipped (with the reason) elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.settings import Settings
from server import create_app
from tests.fakes.graph import FakeGraph
from tests.support import ADMIN, NUMBER, ROOT, SECRET, TOKEN, VERIFY

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(service: str, error: BaseException) -> None:
    message = f"{service} is unreachable ({type(error).__name__}: {error})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI needs it")
    pytest.skip(message)


async def require_postgres() -> str:
    """TEST_DATABASE_URL, once Postgres answers there (else skip, or fail under CI)."""
    try:
        conn = await asyncpg.connect(TEST_DATABASE_URL, timeout=5)
        await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        unavailable(f"Postgres at {TEST_DATABASE_URL}", e)
    return TEST_DATABASE_URL


async def require_redis() -> str:
    """TEST_REDIS_URL, once Redis answers there (else skip, or fail under CI)."""
    client = redis.from_url(TEST_REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as e:
        unavailable(f"Redis at {TEST_REDIS_URL}", e)
    finally:
        await client.aclose()
    return TEST_REDIS_URL


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A schema of its own on the test Postgres, dropped afterwards: its name."""
    await require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        conn = await asyncpg.connect(TEST_DATABASE_URL)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def postgres_url() -> str:
    return await require_postgres()


@pytest.fixture
async def redis_url() -> str:
    return await require_redis()


@pytest.fixture
async def graph() -> AsyncIterator[tuple[FakeGraph, str]]:
    """A fake Graph API on loopback and its base URL."""
    fake = FakeGraph()
    server = TestServer(fake.app())
    await server.start_server()
    try:
        yield fake, str(server.make_url("/v25.0")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
def env(tmp_path: Path, graph: tuple[FakeGraph, str]) -> dict[str, str]:
    """Settings for an engine on an SQLite file in tmp_path that sends through the fake."""
    _fake, url = graph
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'engine.sqlite3'}",
        "FLOWS_DIR": str(ROOT / "flows"),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY,
        "WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WHATSAPP_PHONE_NUMBER_ID": NUMBER,
        "WHATSAPP_API_URL": url,
        "ADMIN_TOKEN": ADMIN,
    }


AppFactory = Callable[..., Any]


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    """Async closers (engines, stores) a test opened, closed at its end, last first."""
    closers: list[Any] = []
    yield closers
    for close in reversed(closers):
        await close()


@pytest.fixture
async def start_app() -> AsyncIterator[AppFactory]:
    """start_app(env, clock=...) -> a test client of a running engine app; closed at the end."""
    clients: list[TestClient[Any, Any]] = []

    async def start(environ: dict[str, str], **kwargs: Any) -> TestClient[Any, Any]:
        app: web.Application = create_app(Settings.from_env(environ), **kwargs)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


_exit_status: list[int] = [0]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status[0] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """An unclosed SQLite connection keeps a non-daemon thread alive and would hang the run."""
    leftovers = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and not t.daemon
    ]
    if leftovers:
        sys.stderr.write(
            f"\n{len(leftovers)} thread(s) still running at exit (an unclosed store?): exiting anyway\n"
        )
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(_exit_status[0] or 1)
