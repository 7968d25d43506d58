"""A store that cannot write is visible: the real error in the log, /readyz at 503 while it
lasts and back by itself after; a file that cannot be used stops the process with exit 2
instead of leaving it hanging on an open connection."""

from __future__ import annotations

import io
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.stores.sqlite import SqliteStore
from adapters.web import ENGINE
from engine.engine import STORE_FAILURE_MEMORY
from engine.ports import Accept, JournalEntry
from tests.conftest import AppFactory
from tests.fakes.clock import FakeClock
from tests.support import ROOT, body, change, eventually, signed, text


async def fill_up(store: SqliteStore) -> None:
    """Cap the file at the pages it has: SQLite then answers SQLITE_FULL, as on a full disk."""
    ((pages,),) = await store.writer.execute_fetchall("PRAGMA page_count")
    await store.writer.execute(f"PRAGMA max_page_count = {pages}")


def big_webhook(n: int, tag: str) -> tuple[bytes, dict[str, str]]:
    messages = [text(f"1555{i:07d}", f"wamid.{tag}{i}", "x" * 2000) for i in range(n)]
    return signed(body(change(messages)))


async def test_a_full_disk_is_logged_as_such_and_the_write_is_refused_whole(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "full.sqlite3")
    await store.open()
    await fill_up(store)
    entries = [JournalEntry("n:1", f"w{i}", {"blob": "x" * 4000}, 1.0) for i in range(50)]
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        await store.write([Accept(journal=entries)])  # not "cannot rollback"
    assert await store.unhandled() == []
    await store.writer.execute("PRAGMA max_page_count = 1000000")
    await store.write([Accept(journal=entries)])
    assert len(await store.unhandled()) == 50
    await store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 400 KiB tmpfs: a real disk that fills up (needs the right to mount, as root has)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


async def test_a_real_full_disk_reports_its_own_error_and_fails_the_probe(small_disk: Path) -> None:
    """On a full disk SQLite ends the transaction itself; the caller must still see "database
    or disk is full", not the rollback's "no transaction is active", and the readiness probe
    (a write) must fail where a SELECT 1 would pass."""
    store = SqliteStore(small_disk / "engine.sqlite3")
    await store.open()
    error = None
    for k in range(200):
        entries = [JournalEntry("n:1", f"w{k}.{i}", {"blob": "x" * 4000}, 1.0) for i in range(10)]
        try:
            await store.write([Accept(journal=entries)])
        except sqlite3.OperationalError as e:
            error = e
            break
    assert error is not None and "database or disk is full" in str(error)
    # A failed transaction leaves room in the WAL that small writes may still use: fill that
    # too, until a write as small as the probe's fails.
    for k in range(5000):
        try:
            await store.write([Accept(journal=[JournalEntry("n:1", f"s{k}", {}, 1.0)])])
        except sqlite3.OperationalError as e:
            assert "database or disk is full" in str(e)
            break
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        await store.ping()
    await store.close()


async def test_a_full_disk_turns_readiness_to_503_and_back(
    start_app: AppFactory,
    env: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Webhooks answer 503 (Meta retries), /readyz says the store is down with the real error,
    the log says it once; when space comes back, the retried webhook is accepted and /readyz is
    200 again by itself."""
    clock = FakeClock()
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]
    store = engine.store
    assert isinstance(store, SqliteStore)
    await fill_up(store)
    raw, headers = big_webhook(40, "a")
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
            assert r.status == 503 and r.headers["Retry-After"]
    r = await client.get("/readyz")
    report = await r.json()
    assert r.status == 503
    assert report["store"] == "down: OperationalError: database or disk is full"
    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1 and "database or disk is full" in errors[0], errors
    assert not any("cannot rollback" in rec.getMessage() for rec in caplog.records)
    metrics = await (await client.get("/metrics")).text()
    assert "engine_store_write_failures_total 1.0" in metrics

    # Space comes back; with no traffic at all, readiness recovers once the failure is old.
    await store.writer.execute("PRAGMA max_page_count = 1000000")
    assert (await client.get("/readyz")).status == 503
    await clock.advance(STORE_FAILURE_MEMORY + 1)
    assert (await client.get("/readyz")).status == 200
    assert any("the store writes again" in rec.getMessage() for rec in caplog.records)
    r = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert r.status == 200
    await engine.actors.wait_idle()
    assert len(await store.unhandled()) == 0

    async def drained() -> bool:  # 40 replies: past the number's burst, they go at SEND_RATE
        await clock.advance(0.1)
        return engine.delivery.pending == 0

    await eventually(drained)


async def test_readiness_follows_failing_writes_even_when_a_small_probe_would_pass(
    start_app: AppFactory, env: dict[str, str]
) -> None:
    """A write that failed in the last seconds keeps /readyz at 503 whatever the probe says
    (a probe can pass in room a failed transaction left behind)."""
    clock = FakeClock()
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]
    await fill_up(engine.store)
    raw, headers = big_webhook(40, "b")
    assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 503
    await clock.advance(STORE_FAILURE_MEMORY - 1)
    assert (await client.get("/readyz")).status == 503


def run_server(tmp_path: Path, database: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py")],
        env={
            "PATH": "/usr/bin:/bin",
            "PORT": "0",
            "FLOWS_DIR": str(ROOT / "flows"),
            "DATABASE_URL": f"sqlite:///{database}",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,  # a process left hanging on an open connection fails here
    )


def schema_only(version: int) -> Callable[[Path], None]:
    """A file that claims a schema version and holds none of its tables."""

    def make(path: Path) -> None:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO schema_version VALUES ({version})")
        conn.commit()
        conn.close()

    return make


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_bytes(b"this is not a database" * 100), "file is not a database"),
        (schema_only(99), "schema version 99, newer than this engine's"),
        (schema_only(2), "no such table: heartbeat"),  # opens, but cannot take a write
    ],
    ids=["not a database", "newer schema", "cannot write"],
)
def test_a_sqlite_file_that_cannot_be_used_exits_2_with_one_line(
    tmp_path: Path, make: object, expected: str
) -> None:
    database = tmp_path / "engine.sqlite3"
    make(database)  # type: ignore[operator]
    result = run_server(tmp_path, database)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("engine: DATABASE_URL: "), lines
    assert expected in lines[0]
