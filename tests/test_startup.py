"""A configuration that cannot work stops `python server.py` at start: exit 2, one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.stores.sqlite import SqliteStore
from engine.errors import ConfigError
from tests.process import Server
from tests.support import ROOT


def run_server(environ: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PORT": "0",
        "FLOWS_DIR": str(ROOT / "flows"),
        **environ,
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "server.py")],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def broken_flows(tmp: Path) -> Path:
    folder = tmp / "flows"
    folder.mkdir()
    (folder / "support.yaml").write_text(
        "start: hello\nstates:\n  hello:\n    say: hi\n    then: nowhere\n"
    )
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CASES = [
    ("bad database URL", {"DATABASE_URL": "mysql://db/app"}, "DATABASE_URL: unsupported scheme"),
    ("unknown sender", {"SENDER": "pigeon"}, "SENDER='pigeon' is unknown"),
    (
        "whatsapp sender without token",
        {"SENDER": "whatsapp"},
        "SENDER=whatsapp needs WHATSAPP_ACCESS_TOKEN",
    ),
    (
        "unreachable Postgres",
        {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/test"},
        "DATABASE_URL: cannot reach postgres at 127.0.0.1",
    ),
    (
        "malformed Postgres URL",
        {"DATABASE_URL": "postgresql://postgres:pw@[::1:5432/test"},
        "DATABASE_URL: malformed URL",
    ),
    ("malformed Redis URL", {"REDIS_URL": "redis://[::1:6379/7"}, "REDIS_URL: malformed URL"),
    (
        "Redis URL option",
        {"REDIS_URL": "redis://127.0.0.1:6379/7?socket_timeout=abc"},
        "REDIS_URL: Invalid value for 'socket_timeout'",
    ),
    (
        "Redis database name",
        {"REDIS_URL": "redis://127.0.0.1:6379/abc"},
        "the database is a number",
    ),
    ("invalid flow", {"FLOWS_DIR": "<broken>"}, "support.yaml:5: go to unknown state 'nowhere'"),
    (
        "missing entry flow",
        {"ENTRY_FLOW": "ordering"},
        "ENTRY_FLOW 'ordering': no ordering.yaml here",
    ),
    (
        "unwritable SQLite path",
        {"DATABASE_URL": "sqlite:///<file>/engine.sqlite3"},
        "cannot use SQLite file",
    ),
    (
        "unwritable /proc path",
        {"DATABASE_URL": "sqlite:////proc/engine/engine.sqlite3"},
        "cannot use SQLite file",
    ),
    ("bad handoff TTL", {"HANDOFF_TTL": "forever"}, "HANDOFF_TTL"),
    ("MEDIA_DIR is a file", {"MEDIA_DIR": "<file>"}, "MEDIA_DIR="),
    ("MEDIA_DIR under a file", {"MEDIA_DIR": "<file>/media"}, "cannot be a folder"),
]


@pytest.mark.parametrize(("case", "environ", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_configuration_exits_2_with_one_line(
    tmp_path: Path, case: str, environ: dict[str, str], expected: str
) -> None:
    """The process stops before serving, says what and where in one line, and exits 2."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    resolved = {
        k: v.replace("<broken>", str(broken_flows(tmp_path)) if v == "<broken>" else v).replace(
            "<file>", str(blocker)
        )
        for k, v in environ.items()
    }
    result = run_server(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'ok.sqlite3'}", **resolved}, tmp_path
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("engine: ") and expected in lines[0], lines[0]


def test_port_in_use_exits_2(tmp_path: Path) -> None:
    """A port another process holds is a configuration that cannot work."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run_server(
            {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
            },
            tmp_path,
        )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # before the store or the flows are touched
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]
    assert not (tmp_path / "x.sqlite3").exists()


async def test_a_second_engine_on_the_same_sqlite_file_exits_2_and_sends_nothing(
    tmp_path: Path,
) -> None:
    """Two engines on one file would both replay the outbox: every pending reply twice."""
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    first = Server({"DATABASE_URL": database, "FLOWS_DIR": str(ROOT / "flows")}, tmp_path)
    await first.start()
    try:
        second = run_server({"DATABASE_URL": database, "HOST": "127.0.0.1"}, tmp_path)
    finally:
        first.terminate()
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert "shared.sqlite3 is in use by another engine (process" in lines[0]
    store = SqliteStore(tmp_path / "shared.sqlite3")  # the first one gave the lock up
    await store.open()
    await store.close()


async def test_the_sqlite_lock_is_one_engine_per_file(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "one.sqlite3")
    await first.open()
    try:
        with pytest.raises(ConfigError, match="in use by another engine"):
            await SqliteStore(tmp_path / "one.sqlite3").open()
        other = SqliteStore(tmp_path / "two.sqlite3")  # another file is another engine's
        await other.open()
        await other.close()
    finally:
        await first.close()


def test_an_unreachable_postgres_is_one_line_at_start(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = run_server({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/x"}, tmp_path)
    assert result.returncode == 2
    assert f"DATABASE_URL: cannot reach postgres at 127.0.0.1:{port}/x" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_schema_name_that_is_not_one_is_refused(tmp_path: Path) -> None:
    result = run_server(
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test?schema=a;drop"}, tmp_path
    )
    assert result.returncode == 2
    assert "Postgres schema 'a;drop': lower-case letters, digits and _" in result.stderr
