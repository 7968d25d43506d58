"""The built-in http action, through the real aiohttp client, against a small business endpoint
on loopback: headers, signature, exact numbers, retries on a clock tests move, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import textwrap
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.http_action import MAX_ANSWER, HttpAction, dumps
from engine.actions import ActionContext, ActionFailed
from engine.settings import Settings
from tests.conftest import AppFactory
from tests.fakes.clock import FakeClock
from tests.fakes.graph import FakeGraph
from tests.support import NUMBER, body, change, eventually, signed, text


class Endpoint:
    """A business system: answers from a script, one answer per request, and records them."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[web.StreamResponse] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(
            {"method": request.method, "path": request.path, "headers": request.headers, "raw": raw}
        )
        if self.script:
            return self.script.pop(0)
        return web.json_response({"id": "BP-7", "total": 1.1})


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    fake = Endpoint()
    server = TestServer(fake.app())
    await server.start_server()
    try:
        yield fake, str(server.make_url("/api")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[tuple[HttpAction, FakeClock]]:
    clock = FakeClock()
    action = HttpAction(clock, secret="shh", rand=lambda: 1.0)
    yield action, clock
    await action.close()


def context(clock: FakeClock, within: float = 10.0) -> ActionContext:
    return ActionContext("k" * 32, "n:1", "shop", "place", clock.now() + within)


async def run(clock: FakeClock, call: Any) -> Any:
    """Run `call`, moving the clock a second at a time while it sleeps between tries."""
    task = asyncio.ensure_future(call)
    while not task.done():
        await asyncio.sleep(0.01)
        await clock.advance(1.0)
    return task.result()


async def test_a_post_carries_exact_json_the_key_and_a_signature(
    http: tuple[HttpAction, FakeClock], endpoint: tuple[Endpoint, str]
) -> None:
    action, clock = http
    fake, url = endpoint
    body = {"items": [{"sku": "A", "qty": Decimal(3)}], "total": Decimal("0.10"), "ok": True}
    result = await action.call(context(clock), f"{url}/orders", body, headers={"X-Shop": "7"})
    assert result == {"id": "BP-7", "total": Decimal("1.1")}  # parsed as Decimal, not float
    [req] = fake.requests
    assert req["method"] == "POST" and req["path"] == "/api/orders"
    assert req["raw"] == b'{"items":[{"sku":"A","qty":3}],"total":0.10,"ok":true}'
    h = req["headers"]
    assert h["Idempotency-Key"] == "k" * 32
    assert h["Content-Type"] == "application/json"
    assert h["X-Shop"] == "7"
    timestamp = h["X-Engine-Timestamp"]
    assert timestamp == str(int(clock.now()))
    mac = hmac.new(b"shh", timestamp.encode() + b"." + req["raw"], hashlib.sha256).hexdigest()
    assert h["X-Engine-Signature"] == f"sha256={mac}"


async def test_without_a_secret_nothing_is_signed_and_a_flow_cannot_forge_our_headers(
    endpoint: tuple[Endpoint, str],
) -> None:
    clock = FakeClock()
    action = HttpAction(clock)
    fake, url = endpoint
    try:
        await action.call(
            context(clock), url, None, "GET", {"Idempotency-Key": "mine", "X-Engine-Signature": "x"}
        )
    finally:
        await action.close()
    [req] = fake.requests
    assert req["method"] == "GET" and req["raw"] == b""
    assert req["headers"]["Idempotency-Key"] == "k" * 32
    assert "X-Engine-Signature" not in req["headers"]


async def test_5xx_429_and_connection_errors_are_tried_again_within_the_time(
    http: tuple[HttpAction, FakeClock], endpoint: tuple[Endpoint, str]
) -> None:
    action, clock = http
    fake, url = endpoint
    fake.script = [
        web.Response(status=503),
        web.Response(status=429, headers={"Retry-After": "2"}),
        web.json_response({"id": "BP-8"}),
    ]
    started = clock.now()
    assert await run(clock, action.call(context(clock), url, {})) == {"id": "BP-8"}
    assert len(fake.requests) == 3
    assert {r["headers"]["Idempotency-Key"] for r in fake.requests} == {"k" * 32}
    assert clock.now() - started >= 2.5  # 0.5 s after the 503, then the 2 s it asked for


async def test_an_endpoint_down_past_the_time_is_unavailable(
    http: tuple[HttpAction, FakeClock],
) -> None:
    action, clock = http
    with pytest.raises(ActionFailed) as failed:
        await run(clock, action.call(context(clock, within=4), "http://127.0.0.1:9/none", {}))
    assert failed.value.kind == "unavailable"
    assert "Client" in failed.value.message or "Error" in failed.value.message


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        (
            web.Response(status=422, text="sku unknown\nline 2"),
            "rejected",
            "HTTP 422: sku unknown line 2",
        ),
        (
            web.Response(status=302, headers={"Location": "http://elsewhere/"}),
            "rejected",
            "HTTP 302",
        ),
        (
            web.Response(body=b"{not json", content_type="application/json"),
            "result",
            "not valid JSON",
        ),
        (
            web.Response(body=b"[" * 100_000, content_type="application/json"),
            "result",
            "not valid JSON",
        ),
        (web.Response(body=b"x" * (MAX_ANSWER + 1)), "result", "over 1024 KiB"),
    ],
)
async def test_refusals_and_unreadable_answers_take_on_error(
    http: tuple[HttpAction, FakeClock],
    endpoint: tuple[Endpoint, str],
    answer: web.Response,
    kind: str,
    message: str,
) -> None:
    action, clock = http
    fake, url = endpoint
    fake.script = [answer]
    with pytest.raises(ActionFailed) as failed:
        await action.call(context(clock), url, {})
    assert failed.value.kind == kind
    assert message in failed.value.message
    assert len(fake.requests) == 1  # a refusal is not tried again


async def test_a_text_answer_is_the_result_and_an_empty_one_is_nothing(
    http: tuple[HttpAction, FakeClock], endpoint: tuple[Endpoint, str]
) -> None:
    action, clock = http
    fake, url = endpoint
    fake.script = [web.Response(text="BP-9"), web.Response(status=204)]
    assert await action.call(context(clock), url, {}) == "BP-9"
    assert await action.call(context(clock), url, {}) is None


@pytest.mark.parametrize(
    ("url", "method", "message"),
    [
        ("file:///etc/passwd", "POST", "is not an http(s) address"),
        ("http://", "POST", "cannot send to"),
        ("https://x.example/", "TRACE", "method 'TRACE'"),
    ],
)
async def test_a_bad_url_or_method_at_run_time_is_refused_without_a_request(
    http: tuple[HttpAction, FakeClock], url: str, method: str, message: str
) -> None:
    action, clock = http
    with pytest.raises(ActionFailed) as failed:
        await action.call(context(clock), url, {}, method)
    assert failed.value.kind == "rejected"
    assert message in failed.value.message


def test_json_numbers_are_written_exactly() -> None:
    assert dumps({"a": Decimal("1E+2"), "b": [Decimal("-0.000001")], "c": "é"}) == (
        '{"a":100,"b":[-0.000001],"c":"é"}'
    )
    with pytest.raises(ValueError, match="not a number"):
        dumps(Decimal("NaN"))


# --- through the server: ACTIONS_SECRET takes effect ------------------------------------------

FLOW = """
start: ask
states:
  ask:
    say: "Type order."
    on:
      - text: order
        go: place
  place:
    action: http
    with:
      url: "{base}/orders"
      body: {customer: "{name}", qty: "=3"}
    save: {order: id}
    on_done: placed
    on_error: sorry
  placed:
    say: "Order {order} placed."
    end: true
  sorry:
    say: "Sorry: {= error.kind}."
    end: true
"""


async def test_the_server_calls_the_endpoint_signed_with_actions_secret(
    tmp_path: Path,
    start_app: AppFactory,
    env: dict[str, str],
    graph: tuple[FakeGraph, str],
    endpoint: tuple[Endpoint, str],
) -> None:
    fake, url = endpoint
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "shop.yaml").write_text(textwrap.dedent(FLOW).lstrip("\n").replace("{base}", url))
    env = {**env, "FLOWS_DIR": str(flows), "ENTRY_FLOW": "shop", "ACTIONS_SECRET": "s3cret"}
    assert Settings.from_env(env).actions_secret is not None
    client = await start_app(env)
    for n, (wamid, words) in enumerate((("wamid.A1", "hi"), ("wamid.A2", "order")), start=1):
        raw, headers = signed(body(change([text("15550001", wamid, words)])))
        r = await client.post("/webhooks/whatsapp", data=raw, headers=headers)
        assert r.status == 200
        await eventually(lambda n=n: len(graph[0].requests) >= n)
    sent = [r["body"]["text"]["body"] for r in graph[0].requests]
    assert sent == ["Type order.", "Order BP-7 placed."]
    [req] = fake.requests
    assert json.loads(req["raw"]) == {"customer": "Ana", "qty": 3}
    timestamp = req["headers"]["X-Engine-Timestamp"]
    mac = hmac.new(b"s3cret", timestamp.encode() + b"." + req["raw"], hashlib.sha256).hexdigest()
    assert req["headers"]["X-Engine-Signature"] == f"sha256={mac}"
    assert graph[0].requests[0]["body"]["to"] == "+15550001"
    assert graph[0].requests[0]["number"] == NUMBER
