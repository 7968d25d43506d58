"""Settings.from_env: every variable parsed, every bad value named in one line."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.settings import Secret, Settings, parse_duration, parse_size


def test_defaults_need_no_credentials() -> None:
    """With an empty environment the engine runs on SQLite with the console sender."""
    s = Settings.from_env({})
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    assert s.database.kind == "sqlite" and s.database.path == Path("var/engine.sqlite3")
    assert s.sender == "console"
    assert s.entry_flow == "support" and s.flows_dir == Path("flows")
    assert s.handoff_ttl == 24 * 3600
    assert s.redis_url is None and s.admin_token is None and s.whatsapp_app_secret is None
    assert s.whatsapp_api_url.startswith("https://graph.facebook.com/v")


def test_access_token_selects_the_whatsapp_sender() -> None:
    """SENDER defaults to whatsapp once WHATSAPP_ACCESS_TOKEN is set."""
    s = Settings.from_env({"WHATSAPP_ACCESS_TOKEN": "tok"})
    assert s.sender == "whatsapp"
    assert s.whatsapp_access_token == Secret("tok")


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        ("sqlite:///var/x.db", "sqlite", Path("var/x.db")),
        ("sqlite:////tmp/abs.db", "sqlite", Path("/tmp/abs.db")),
        ("postgresql://u:p@db:5432/app", "postgres", None),
        ("postgres://db/app", "postgres", None),
    ],
)
def test_database_urls(url: str, kind: str, where: Path | None) -> None:
    """Relative and absolute SQLite paths, and Postgres DSNs, are understood."""
    db = Settings.from_env({"DATABASE_URL": url}).database
    assert db.kind == kind
    assert db.path == where


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DATABASE_URL": "mysql://db/app"}, "unsupported scheme 'mysql'"),
        ({"DATABASE_URL": "sqlite://relative.db"}, "sqlite:///relative/path"),
        ({"DATABASE_URL": "postgresql://db:port/app"}, "malformed port"),
        ({"SENDER": "telegram"}, "SENDER='telegram' is unknown"),
        ({"SENDER": "whatsapp"}, "needs WHATSAPP_ACCESS_TOKEN"),
        ({"SENDER": "twilio"}, "SENDER=twilio needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and"),
        (
            {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32},
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN together",
        ),
        ({"TWILIO_ACCOUNT_SID": "ACx", "TWILIO_AUTH_TOKEN": "t"}, "AC and 32 hex digits"),
        ({"TWILIO_WHATSAPP_FROM": "14155238886"}, "TWILIO_WHATSAPP_FROM: the sender in E.164"),
        ({"PUBLIC_URL": "engine.example.com"}, "PUBLIC_URL='engine.example.com' is not an http"),
        ({"PUBLIC_URL": "https://e.example.com/?a=1"}, "PUBLIC_URL: the scheme, host and path"),
        ({"PUBLIC_URL": "https://e.example.com/#x"}, "no query, fragment, password or spaces"),
        ({"PUBLIC_URL": "https://u:p@e.example.com"}, "no query, fragment, password or spaces"),
        ({"PUBLIC_URL": "https://e.example.com /x"}, "no query, fragment, password or spaces"),
        ({"TWILIO_API_URL": "api.twilio.com"}, "TWILIO_API_URL"),
        ({"PORT": "http"}, "PORT='http' is not a whole number"),
        ({"PORT": "70000"}, "PORT=70000 must be between 0 and 65535"),
        ({"HANDOFF_TTL": "soon"}, "HANDOFF_TTL"),
        ({"HANDOFF_TTL": "0s"}, "must be longer than zero"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"WHATSAPP_API_URL": "graph.facebook.com"}, "WHATSAPP_API_URL"),
        ({"ENTRY_FLOW": "../etc"}, "ENTRY_FLOW"),
        ({"SQLITE_SYNCHRONOUS": "OFF"}, "SQLITE_SYNCHRONOUS"),
        ({"MAX_BACKLOG": "0"}, "MAX_BACKLOG=0 must be at least 1"),
        ({"SEND_CONCURRENCY": "5000"}, "SEND_CONCURRENCY=5000 must be between 1 and 1024"),
        ({"MAX_BODY_MEMORY": "lots"}, "MAX_BODY_MEMORY: 'lots' is not a size"),
        ({"MAX_BODY_MEMORY": "1MB"}, "must be at least 4MiB"),
        ({"HTTP_READ_TIMEOUT": "0s"}, "HTTP_READ_TIMEOUT='0s' must be longer than zero"),
        ({"SEND_MAX_AGE": "never"}, "SEND_MAX_AGE"),
        ({"SEND_RECONCILE": "2m"}, "SEND_RECONCILE='2m': at most 60s"),
        ({"SEND_RECONCILE": "-1s"}, "SEND_RECONCILE"),
        (
            {"WHATSAPP_ACCESS_TOKEN": "t", "WHATSAPP_ACCESS_TOKEN_FILE": "/run/token"},
            "not both",
        ),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(
    environ: dict[str, str], message: str
) -> None:
    """A value that cannot work raises ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(environ)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64MB", 64_000_000), ("64MiB", 64 * 2**20), ("512 kib", 512 * 1024), ("1GB", 10**9)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_token_file_selects_the_whatsapp_sender() -> None:
    s = Settings.from_env({"WHATSAPP_ACCESS_TOKEN_FILE": "/run/secrets/token"})
    assert s.sender == "whatsapp" and s.whatsapp_access_token_file == Path("/run/secrets/token")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("7d", 604800),
        ("1h30m", 5400),
        ("250ms", 0.25),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations read as designers write them."""
    assert parse_duration(text) == seconds


def test_secrets_never_print() -> None:
    """Secret values are masked in repr and str, so a logged Settings shows no secret."""
    s = Settings.from_env(
        {"WHATSAPP_ACCESS_TOKEN": "EAAG-very-secret", "ADMIN_TOKEN": "adm-secret"}
    )
    assert "very-secret" not in repr(s) and "adm-secret" not in repr(s)
    assert "very-secret" not in str(s.whatsapp_access_token)


def test_passwords_inside_urls_are_known_secrets() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app:hunter2@db/x",
            "REDIS_URL": "redis://:r3dis@cache:6379/0",
        }
    )
    assert {"hunter2", "r3dis"} <= set(s.secrets())


def test_nothing_is_read_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the mapping passed in counts."""
    monkeypatch.setenv("PORT", "1234")
    assert Settings.from_env({}).port == 8080


@pytest.mark.parametrize("mode, value", [("NORMAL", 1), ("FULL", 2), (None, 1)])
async def test_sqlite_synchronous_is_the_mode_sqlite_runs_with(
    start_app: Any, env: dict[str, str], mode: str | None, value: int
) -> None:
    """What SQLITE_SYNCHRONOUS says is what the running store's connection reads back."""
    from adapters.web import ENGINE

    if mode is not None:
        env["SQLITE_SYNCHRONOUS"] = mode
    client = await start_app(env)
    store = client.app[ENGINE].store
    rows = await store.writer.execute_fetchall("PRAGMA synchronous")
    assert list(rows) == [(value,)]


def test_the_database_is_described_without_its_password_and_with_its_schema() -> None:
    """What the start-up line says of DATABASE_URL: where, and which schema; never a secret."""
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://app:hunter2@db.internal:6543/engine?schema=shop_1"}
    )
    said = settings.database.describe()
    assert said == "postgres at db.internal:6543/engine (schema shop_1)"
    assert "hunter2" not in said


async def test_send_rate_paces_the_app_s_sends(
    start_app: Any, env: dict[str, str], graph: tuple[Any, str]
) -> None:
    """SEND_RATE=1 in the environment: an agent's reply long enough for three messages leaves
    one a second (on the engine's clock), in order."""
    import io

    from adapters.web import ENGINE
    from tests.fakes.clock import FakeClock
    from tests.support import ADMIN, body, change, signed, text

    fake = graph[0]
    clock = FakeClock()
    fake.clock = clock.now
    env["SEND_RATE"] = "1"
    client = await start_app(env, clock=clock)
    engine = client.app[ENGINE]
    raw, headers = signed(body(change([text("15550000031", "w1", "hi")])))
    webhook = await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert webhook.status == 200
    await engine.actors.wait_idle()
    await clock.advance(1)
    reply = {"text": " ".join(["lorem"] * 2000)}  # 11,999 characters: three messages
    auth = {"Authorization": f"Bearer {ADMIN}"}
    r = await client.post("/api/conversations/15550000031/messages", json=reply, headers=auth)
    assert r.status == 200
    for _ in range(200):  # time moves by hand; the sends themselves are real HTTP
        if not engine.delivery.pending:
            break
        await clock.advance(0.25)
        await asyncio.sleep(0.01)
    sent = fake.requests
    agent = [q["received"] for q in sent if q["body"]["biz_opaque_callback_data"][:2] == "a:"]
    assert len(agent) == 3
    # A second apart, give or take the quarter second the clock moves while a send is on the
    # wire (the fake stamps what it receives with the clock of that moment).
    assert all(b - a >= 0.75 for a, b in itertools.pairwise(agent)), agent


async def test_send_reconcile_reaches_the_app_s_delivery(
    start_app: Any, env: dict[str, str], tmp_path: Any
) -> None:
    """A reply a crash left in flight waits SEND_RECONCILE after the app starts: with 0s it
    goes at once."""
    from adapters.stores.sqlite import SqliteStore
    from adapters.web import ENGINE
    from engine.ports import Commit, ConversationRow, MessageRow, Sending
    from tests.fakes.clock import FakeClock

    path = tmp_path / "engine.sqlite3"
    store = SqliteStore(path)
    await store.open()
    payload = '{"message":{"type":"text","body":"left in flight"},"phone":"15550000051"}'
    row = MessageRow(
        "r:w9:0",
        "n:1",
        "out",
        "106540352242922",
        "text",
        "left in flight",
        "pending",
        1.0,
        payload=payload,
    )
    convo = ConversationRow("n:1", "106540352242922", "support", None, False, 1.0, {"v": 2})
    await store.write([Commit(convo, [row])])
    await store.write([Sending("r:w9:0", 2.0)])
    await store.close()
    for wait, sent in (("60s", 0), ("0s", 1)):
        env.update(DATABASE_URL=f"sqlite:///{path}", SEND_RECONCILE=wait)
        clock = FakeClock()
        client = await start_app(env, clock=clock)
        engine = client.app[ENGINE]
        await clock.advance(1)
        for _ in range(100):
            if not engine.delivery.busy():
                break
            await asyncio.sleep(0.01)  # the send itself is real HTTP
        assert engine.metrics.reconciled.get("resent") == sent, wait
        await client.close()
