"""Anyone on the internet can send bytes: nothing they send may cause a 500, a traceback in the
log, a forged log line, unbounded memory, or the loss of a good message beside a bad one.

Raw sockets send what an HTTP client refuses to (other bytes in headers, broken framing, bodies
that stop half way); a property test throws generated requests at a live server; the last test
repeats the attacks against `python server.py` and reads its log.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.web import BODIES, ENGINE, Throttled
from engine.logs import MaskingFormatter, escape, mask
from engine.settings import Settings
from server import create_app
from tests.conftest import AppFactory
from tests.fakes.graph import FakeGraph
from tests.process import Server
from tests.support import (
    ADMIN,
    NUMBER,
    ROOT,
    SECRET,
    body,
    change,
    eventually,
    signed,
    text,
)
from tests.support import status as status_item

GOOD_SIGNATURE_SHAPE = "sha256=" + "0" * 64


async def exchange(port: int, request: bytes, *, then_close: bool = False) -> bytes:
    """Send raw bytes; return the status line the server answered (b"" if it just closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if then_close:
            return b""
        line = await asyncio.wait_for(reader.readline(), 10)
        return line.strip()
    finally:
        writer.close()


def code_of(line: bytes) -> int:
    return int(line.split()[1]) if line else 0


def request(
    method: str,
    path: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    content: bytes = b"",
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode()
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(content) + content


def sign(content: bytes) -> bytes:
    return b"sha256=" + hmac.new(SECRET.encode(), content, hashlib.sha256).hexdigest().encode()


class Records(logging.Handler):
    """Every record, formatted the way the server writes them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(MaskingFormatter())
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.extend(self.format(record).splitlines())

    def loud(self) -> list[str]:
        """Records that would page someone or carry a traceback."""
        return [self.format(r) for r in self.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    root.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in ("aiohttp", "adapters", "engine")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
async def app(start_app: AppFactory, env: dict[str, str]) -> Any:
    return await start_app(env)


def port_of(client: Any) -> int:
    return int(client.server.port)


@pytest.fixture
async def served(env: dict[str, str]) -> AsyncIterator[tuple[web.Application, int]]:
    """The app behind an AppRunner made as server.py makes it (aiohttp's test server cancels a
    handler when its client goes; the real one lets it finish)."""
    app = create_app(Settings.from_env(env))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield app, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


# --- headers a client library would never send ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            request(
                "POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", b"sha256=\xc3\xa9\xff")]
            ),
            403,
        ),
        (
            request(
                "POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", b"sha256=" + b"\xe9" * 64)]
            ),
            403,
        ),
        (request("POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", b"md5=abc")]), 403),
        (request("GET", "/api/conversations", [(b"Authorization", b"Bearer \xff\xfe")]), 401),
        (request("GET", "/api/conversations", [(b"Authorization", b"\xf0\x9f\x92\xa9")]), 401),
        (
            request(
                "GET",
                "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=%FF%FE&hub.challenge=1",
            ),
            403,
        ),
        (
            request(
                "GET", "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=\xff&hub.challenge=1"
            ),
            400,
        ),
        (b"GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n", 400),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
            400,
        ),  # TLS to a plain port
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (
            b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            request(
                "POST",
                "/webhooks/whatsapp",
                [
                    (b"X-Hub-Signature-256", GOOD_SIGNATURE_SHAPE.encode()),
                    (b"Content-Encoding", b"gzip"),
                ],
                b"not gzip at all",
            ),
            415,
        ),
        (
            request(
                "POST",
                "/webhooks/whatsapp",
                [
                    (b"X-Hub-Signature-256", GOOD_SIGNATURE_SHAPE.encode()),
                    (b"Content-Encoding", b"identity"),
                    (b"Content-Encoding", b"gzip"),
                ],
                b"\x1f\x8b\x08\x00" + b"\x00" * 40,
            ),
            415,
        ),
        (
            request(
                "POST",
                "/webhooks/whatsapp",
                [
                    (b"X-Hub-Signature-256", GOOD_SIGNATURE_SHAPE.encode()),
                    (b"Content-Encoding", b"identity, deflate"),
                ],
                b"x" * 40,
            ),
            415,
        ),
        (
            b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"X-Hub-Signature-256: " + GOOD_SIGNATURE_SHAPE.encode() + b"\r\n\r\n"
            b"5\r\nhello\r\nzz\r\nbroken\r\n0\r\n\r\n",
            400,
        ),
    ],
    ids=[
        "non-ASCII signature",
        "latin-1 signature",
        "other algorithm",
        "non-ASCII bearer",
        "emoji authorization",
        "percent-encoded bytes in verify token",
        "raw byte in verify token",
        "control byte in a header name",
        "bare LF inside a header",
        "TLS handshake",
        "20 kB request line",
        "negative Content-Length",
        "Content-Length and chunked",
        "compressed body",
        "a second Content-Encoding",
        "a list of encodings",
        "broken chunk size",
    ],
)
async def test_bytes_no_client_would_send_get_a_4xx_and_no_traceback(
    app: Any, records: Records, raw: bytes, expected: int
) -> None:
    assert code_of(await exchange(port_of(app), raw)) == expected
    await asyncio.sleep(0)
    assert records.loud() == []


async def test_a_100k_deep_json_body_to_the_agent_api_is_a_400(
    start_app: AppFactory, env: dict[str, str], records: Records
) -> None:
    client = await start_app(env)
    raw, headers = signed(body(change([text("15550001", "wamid.1", "hi")])))
    assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
    await client.app[ENGINE].actors.wait_idle()
    deep = b"[" * 100_000 + b"]" * 100_000
    r = await client.post(
        "/api/conversations/15550001/messages",
        data=deep,
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    assert r.status == 400
    huge = b'{"text": ' + b"9" * 5000 + b"}"
    r = await client.post(
        "/api/conversations/15550001/messages",
        data=huge,
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status == 400
    assert records.loud() == []


# --- bodies: memory, time, clients that go away ---------------------------------------------


async def test_a_client_that_vanishes_mid_body_costs_one_quiet_line(
    served: tuple[web.Application, int], records: Records
) -> None:
    app, port = served
    partial = (
        request(
            "POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", GOOD_SIGNATURE_SHAPE.encode())]
        ).replace(b"Content-Length: 0", b"Content-Length: 100000")
        + b"{" * 5000
    )
    for _ in range(5):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(partial)
        await eventually(lambda: app[BODIES].used > 0)  # the server is reading it
        writer.close()
        await eventually(lambda: app[BODIES].used == 0)
    engine = app[ENGINE]
    await eventually(lambda: engine.metrics.webhook_requests.get("meta", "client_gone") == 5)
    assert records.loud() == []
    mentions = [line for line in records.lines if "abandoned mid-body" in line]
    assert len(mentions) == 5 and all(" DEBUG " in line for line in mentions)


async def test_bodies_beyond_the_memory_budget_wait_for_their_turn(
    start_app: AppFactory, env: dict[str, str]
) -> None:
    """With MAX_BODY_MEMORY at 4MiB, a second 3 MB body while the first is read gets 503 with
    Retry-After before any of it is read; once the first is done, it is accepted."""
    env["MAX_BODY_MEMORY"] = "4MiB"
    client = await start_app(env)
    port = port_of(client)
    filler = "x" * 2900
    doc = body(change([text(f"1555{i:07d}", f"wamid.b{i}", filler) for i in range(1000)]))
    big, headers = signed(doc)
    assert len(big) > 3_000_000
    head = request(
        "POST",
        "/webhooks/whatsapp",
        [(b"X-Hub-Signature-256", headers["X-Hub-Signature-256"].encode())],
    ).replace(b"Content-Length: 0", b"Content-Length: %d" % len(big))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + big[:1000])
    await writer.drain()
    await eventually(lambda: client.app[BODIES].used >= len(big))
    second = await client.post("/webhooks/whatsapp", data=io.BytesIO(big), headers=headers)
    assert second.status == 503 and second.headers["Retry-After"] == "5"
    writer.write(big[1000:])
    await writer.drain()
    assert code_of((await asyncio.wait_for(reader.readline(), 10)).strip()) == 200
    writer.close()
    assert client.app[BODIES].used == 0
    again = await client.post("/webhooks/whatsapp", data=io.BytesIO(big), headers=headers)
    assert again.status == 200  # the same body again: accepted, its messages are duplicates
    metrics = client.app[ENGINE].metrics.webhook_requests
    assert metrics.get("meta", "body_budget") == 1


async def test_a_body_over_the_limit_is_refused_before_it_is_read(app: Any) -> None:
    raw = request(
        "POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", GOOD_SIGNATURE_SHAPE.encode())]
    ).replace(b"Content-Length: 0", b"Content-Length: 999999999")
    assert code_of(await exchange(port_of(app), raw)) == 413
    assert app.app[BODIES].used == 0


async def test_an_unsigned_body_is_refused_without_reading_it(app: Any) -> None:
    raw = request("POST", "/webhooks/whatsapp").replace(
        b"Content-Length: 0", b"Content-Length: 4000000"
    )
    assert code_of(await exchange(port_of(app), raw)) == 401  # not a byte of the body was sent


# --- what the engine does not read costs nothing ---------------------------------------------


async def test_a_huge_integer_costs_only_the_field_or_message_that_holds_it(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """An integer over Python's 4,300-digit limit beside the messages costs nothing; inside a
    message it costs only that message."""
    fake, _ = graph
    client = await start_app(env)
    huge = "9" * 5000
    doc = body(
        change(
            [
                text("15550001", "wamid.ok1", "hi"),
                dict(text("15550002", "wamid.bad", "hi"), timestamp="__HUGE__"),
                text("15550003", "wamid.ok2", "hi"),
            ]
        )
    )
    doc["entry"][0]["changes"][0]["value"]["ignored"] = "__HUGE__"
    raw = json.dumps(doc).replace('"__HUGE__"', huge).encode()
    r = await client.post(
        "/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw).decode()}
    )
    assert r.status == 200
    engine = client.app[ENGINE]
    await eventually(lambda: len({r["body"]["to"] for r in fake.requests}) == 2)
    assert {r["body"]["to"] for r in fake.requests} == {"+15550001", "+15550003"}
    assert engine.metrics.malformed.total() == 1


async def test_bytes_that_are_not_utf8_cost_only_the_text_that_holds_them(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    fake, _ = graph
    client = await start_app(env)
    doc = body(
        change([text("15550001", "wamid.u1", "__BAD__"), text("15550002", "wamid.u2", "hi")])
    )
    raw = json.dumps(doc).encode().replace(b"__BAD__", b"caf\xff \xc0\xaf")
    r = await client.post(
        "/webhooks/whatsapp", data=raw, headers={"X-Hub-Signature-256": sign(raw).decode()}
    )
    assert r.status == 200
    await eventually(lambda: len({r["body"]["to"] for r in fake.requests}) == 2)
    view = await client.app[ENGINE].view(f"{NUMBER}:15550001")
    assert view["messages"][0]["text"] == "caf\ufffd \ufffd\ufffd"


async def test_odd_field_and_status_names_cannot_grow_or_break_the_metrics(
    start_app: AppFactory, env: dict[str, str]
) -> None:
    """2,000 made-up webhook fields and statuses, with control characters in them: the scrape
    stays parseable and the number of series is bounded."""
    from prometheus_client.parser import text_string_to_metric_families

    client = await start_app(env)
    changes = [{"field": f"f{i}\r\x00\x1b[2J\n# EOF", "value": {}} for i in range(1000)]
    changes.append(
        change(
            [],
            statuses=[
                dict(status_item(f"wamid.s{i}", "sent"), status=f"s{i}\r") for i in range(1000)
            ],
        )
    )
    raw, headers = signed(body(*changes))
    assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
    page = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(page)}
    events = families["engine_events"].samples
    assert len(events) <= 201 and any(s.labels["type"] == "other" for s in events)
    assert all(re.fullmatch(r"[A-Za-z0-9_.:+-]+", s.labels["type"]) for s in events)
    assert len(families["engine_message_statuses"].samples) <= 21
    assert "\r" not in page and "\x00" not in page


async def test_a_number_id_that_is_not_one_is_refused_as_malformed(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """phone_number_id ends up in the Graph API URL path: only digits are taken."""
    fake, _ = graph
    client = await start_app(env)
    bad = change([text("15550001", "wamid.n1", "hi")], number="../../me?x=")
    good = change([text("15550002", "wamid.n2", "hi")])
    raw, headers = signed(body(bad, good))
    assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
    await eventually(lambda: fake.requests)
    assert [r["number"] for r in fake.requests] == [NUMBER]
    assert client.app[ENGINE].metrics.malformed.total() == 1


# --- logs ------------------------------------------------------------------------------------


async def test_a_newline_in_a_message_id_cannot_forge_a_log_line(
    app: Any, records: Records
) -> None:
    forged = "1999-12-31 23:59:59,000 ERROR engine.engine: all payments refunded"
    doc = body(change([{"id": f"wamid.x\n{forged}\r\u2028\x1b[2J", "from": "15550001"}]))
    raw, headers = signed(doc)
    assert (await app.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
    (line,) = [line for line in records.lines if "malformed webhook item" in line]
    assert "wamid.x\\n1999-12-31" in line and "\\r\\u2028\\x1b[2J" in line
    assert not any(line.startswith(forged[:10]) for line in records.lines if "refunded" in line)


async def test_the_console_sender_cannot_be_made_to_print_a_line_of_its_own() -> None:
    """stdout often shares a log with stderr: a profile name or an id with a newline, a
    carriage return or an escape sequence stays inside the message's own lines."""
    from adapters.channels.console import ConsoleSender
    from engine.outbound import TextMessage
    from engine.ports import Outgoing

    stream = io.StringIO()
    forged = "1999-12-31 23:59:59,000 ERROR engine: forged"
    out = Outgoing(
        "r:1",
        "n:1",
        f"100\n{forged}",
        f"1555\r{forged}",
        None,
        TextMessage(f"Hi Ana\n{forged}\x1b[2J\u2028{forged}!"),
    )
    await ConsoleSender(stream).send(out)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("-> ") and all(line.startswith("     ") for line in lines[1:])
    assert "\x1b" not in stream.getvalue() and "\\x1b[2J" in stream.getvalue()


async def test_a_3mb_value_does_not_become_a_3mb_log_line(app: Any, records: Records) -> None:
    doc = body(change([{"id": "w" * 3_000_000, "from": "15550001"}]))
    raw, headers = signed(doc)
    r = await app.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    assert r.status == 200
    (line,) = [line for line in records.lines if "malformed webhook item" in line]
    assert len(line) < 4200 and line.endswith("more characters)")


def test_every_control_character_is_escaped_and_tracebacks_are_marked() -> None:
    formatter = MaskingFormatter()
    try:
        raise ValueError("bad\nINFO forged")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "id=%s", ("a\x00b\x7f\x85c\u202ed",), exc_info=True
        )
        record.exc_info = __import__("sys").exc_info()
    text_ = formatter.format(record)
    first, *rest = text_.splitlines()
    assert first.endswith("id=a\\x00b\\x7f\\x85c\\u202ed")
    assert rest and all(line.startswith("  | ") for line in rest)
    assert "  | ValueError: bad" in rest[-2] and rest[-1] == "  | INFO forged"


# --- the property: no request at all gets a 5xx or a traceback ------------------------------


class LiveServer:
    """The app on its own event loop in a thread, so a synchronous property test can hit it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(create_app(self.settings), access_log=None, keepalive_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        assert self._ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        self._loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Records]]:
    folder = tmp_path_factory.mktemp("live")
    settings = Settings.from_env(
        {
            "DATABASE_URL": f"sqlite:///{folder / 'engine.sqlite3'}",
            "FLOWS_DIR": str(ROOT / "flows"),
            "WHATSAPP_APP_SECRET": SECRET,
            "ADMIN_TOKEN": ADMIN,
            "WHATSAPP_VERIFY_TOKEN": "verify",
            "HTTP_READ_TIMEOUT": "2s",
        }
    )
    handler = Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with LiveServer(settings) as server:
            yield server, handler
    finally:
        root.removeHandler(handler)


PATHS = [
    "/webhooks/whatsapp",
    "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=verify&hub.challenge=1",
    "/api/conversations",
    "/api/conversations?limit=99999999999999999999999&handoff=maybe",
    "/api/conversations/15550001",
    "/api/conversations/15550001?limit=-1&number=%00",
    "/api/conversations/%F0%9F%92%A9/messages",
    "/api/conversations/15550001/release",
    "/healthz",
    "/readyz",
    "/metrics",
    "/nowhere",
]
header_value = st.builds(
    bytes.__add__,
    st.sampled_from([b"", b"Bearer ", b"bearer ", b"sha256=", b"SHA256="]),
    st.binary(max_size=80).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
headers = st.lists(
    st.tuples(
        st.sampled_from(
            [b"X-Hub-Signature-256", b"Authorization", b"Content-Type", b"Accept", b"X-Anything"]
        ),
        st.one_of(
            header_value,
            st.sampled_from(
                [f"Bearer {ADMIN}".encode(), GOOD_SIGNATURE_SHAPE.encode(), b"application/json"]
            ),
        ),
    ),
    max_size=4,
)
contents = st.one_of(
    st.binary(max_size=600),
    st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
            max_leaves=12,
        ),
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    path=st.sampled_from(PATHS),
    extra=headers,
    content=contents,
    signed_=st.booleans(),
)
def test_no_request_gets_a_5xx_or_a_traceback(
    live: tuple[LiveServer, Records],
    *,
    method: str,
    path: str,
    extra: list[tuple[bytes, bytes]],
    content: bytes,
    signed_: bool,
) -> None:
    server, log = live
    if signed_:
        extra = [*extra, (b"X-Hub-Signature-256", sign(content))]
    raw = request(method, path, extra, content)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(raw)
        answer = conn.makefile("rb").readline()
    assert answer, "no answer"
    code = code_of(answer.strip())
    assert 100 <= code < 500, answer
    assert log.loud() == []


# --- all of it against the real process -----------------------------------------------------


@pytest.fixture
async def server(env: dict[str, str], tmp_path: Path) -> AsyncIterator[Server]:
    env["HTTP_READ_TIMEOUT"] = "1s"
    env["MAX_BODY_MEMORY"] = "8MiB"
    env["LOG_LEVEL"] = "DEBUG"
    process = Server(env, tmp_path)
    try:
        yield process
    finally:
        process.stop_quietly()


RECORD_START = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)


@pytest.mark.slow
async def test_the_attacks_against_the_real_process(
    server: Server, graph: tuple[FakeGraph, str]
) -> None:
    """Every attack above at once against `python server.py`, with a real customer's message in
    the middle of it: no 5xx, no traceback, every line of the log a record of its own (or a
    marked continuation), nothing forged, the customer answered."""
    fake, _ = graph
    await server.start()
    port = server.port
    attacks = [
        request("POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", b"sha256=\xc3\xa9")]),
        request("GET", "/api/conversations", [(b"Authorization", b"Bearer \xff")]),
        b"GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        request(
            "POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", GOOD_SIGNATURE_SHAPE.encode())]
        ).replace(b"Content-Length: 0", b"Content-Length: 999999999"),
    ]
    answers = [code_of(await exchange(port, a)) for a in attacks]
    assert answers == [403, 401, 400, 400, 413]
    # Headers that never end: the connection is closed after HTTP_READ_TIMEOUT (1s here).
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
    slow_writer.write(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\n")
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(slow_reader.read(), 10) == b""
    assert asyncio.get_running_loop().time() - started < 5
    slow_writer.close()
    forged = "2026-11-28 23:59:59,000 ERROR engine: forged"
    raw, headers = signed(body(change([{"id": f"w\n{forged}", "from": "15550009"}])))
    async with aiohttp.ClientSession() as session:
        url = f"{server.url}/webhooks/whatsapp"
        async with session.post(url, data=raw, headers=headers) as r:
            assert r.status == 200
        partial = request(
            "POST", "/webhooks/whatsapp", [(b"X-Hub-Signature-256", GOOD_SIGNATURE_SHAPE.encode())]
        ).replace(b"Content-Length: 0", b"Content-Length: 3000000")
        holders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(6)]
        for _reader, writer in holders:
            writer.write(partial + b"x" * 200_000)
        await asyncio.gather(*(w.drain() for _r, w in holders))
        for _ in range(3):  # clients that vanish mid-body
            await exchange(port, partial + b"{" * 1000, then_close=True)
        raw, headers = signed(body(change([text("15550001", "wamid.good", "hello")])))
        async with session.post(url, data=raw, headers=headers) as r:
            good = r.status
        async with session.get(f"{server.url}/healthz") as r:
            assert r.status == 200
        late = [await asyncio.wait_for(reader.readline(), 10) for reader, _w in holders]
        for _r, writer in holders:
            writer.close()
        assert sorted(code_of(line.strip()) for line in late) == [408, 408, 503, 503, 503, 503]
        if good == 503:  # the budget was full of strangers' bodies: Meta retries
            async with session.post(url, data=raw, headers=headers) as r:
                good = r.status
        assert good == 200
        await eventually(lambda: any(r["body"].get("to") == "+15550001" for r in fake.requests))
    server.terminate()
    log = server.stderr()
    assert "Traceback" not in log, log
    for line in log.splitlines():
        record = RECORD_START.match(line)
        assert record, f"a line that is no record of its own: {line!r}"
        assert record.group(1) in ("DEBUG", "INFO", "WARNING"), line
    assert forged not in log.replace("\\n", "\n").splitlines()


def test_a_warning_strangers_can_trigger_is_logged_at_most_every_10_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttled = Throttled(10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="adapters.web"):
        for _ in range(500):
            throttled.warn("backlog full")
            now[0] += 0.01  # 500 refusals in 5 seconds
        now[0] = 10.5
        throttled.warn("backlog full")
    assert [r.getMessage() for r in caplog.records] == [
        "backlog full",
        "backlog full (499 more since the last such line)",
    ]


def test_masking_keeps_escapes_whole_and_still_masks_numbers_after_them() -> None:
    line = escape("wamid.x\u20282026-12-06 from 15551234567 \x1b12345678")
    assert mask(line) == "wamid.x\\u20282026-12-06 from ***4567 \\x1b***5678"
