"""The Twilio channel: X-Twilio-Signature checked as Twilio's validators do (its published
vectors), form fields into the engine's events, replies through the REST API on the channel the
conversation came in on, status callbacks into the status ladder, Twilio's error codes, and bad
input that never costs a 500."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from adapters.channels import twilio
from adapters.web import ENGINE
from engine.events import ButtonReply, Document, Image, Location, Message, StatusUpdate, Text
from tests.conftest import AppFactory
from tests.fakes.graph import FakeGraph
from tests.fakes.twilio import (
    ACCOUNT,
    BUSINESS,
    TOKEN,
    FakeTwilio,
    inbound,
    signed_form,
    twilio_error,
)
from tests.support import ADMIN, body, change, signed, text

PUBLIC = "https://engine.example.com"
HOOK = f"{PUBLIC}/webhooks/twilio"

# Twilio's own test vectors (twilio-python, tests/unit/test_request_validator.py).
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": ["CA1234567890ABCDE"],
    "Digits": ["1234"],
    "From": ["+14158675309"],
    "To": ["+18005551212"],
    "Caller": ["+14158675309"],
}


@pytest.mark.parametrize(
    ("url", "params", "given", "body", "ok"),
    [
        (URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", b"", True),
        (URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=", b"", True),  # Twilio signed with :443
        (
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            PARAMS,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            b"",
            True,
        ),
        (
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            PARAMS,
            "0ZXoZLH/DfblKGATFgpif+LLRf4=",
            b"",
            True,
        ),
        (
            URL,
            {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234"]},
            "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
            b"",
            True,
        ),
        (
            URL,
            {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234", "1234"]},
            "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
            b"",
            True,
        ),
        (
            URL + "&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620",
            {},
            "a9nBmqA0ju/hNViExpshrM61xv4=",
            b'{"property": "value", "boolean": true}',
            True,
        ),
        (
            URL + "&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620",
            {},
            "a9nBmqA0ju/hNViExpshrM61xv4=",
            b'{"property": "value", "boolean": false}',
            False,
        ),
        (URL, {**PARAMS, "Digits": ["1235"]}, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", b"", False),
        (URL.replace("foo=1", "foo=2"), PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", b"", False),
        (URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8", b"", False),
        (URL, PARAMS, "\udcff" * 28, b"", False),
    ],
)
def test_signatures_are_checked_as_twilio_s_validators_do(
    url: str, params: dict[str, list[str]], given: str, body: bytes, ok: bool
) -> None:
    assert twilio.valid("12345", url, params, given, body) is ok


def test_form_fields_become_the_engine_s_events() -> None:
    sid = "SM" + "a" * 32
    (m,) = twilio.parse_form(inbound("15551234567", sid, "Cement x 100"), 1_800_000_000)[0]
    assert isinstance(m, Message) and m.content == Text("Cement x 100")
    assert (m.customer.number, m.customer.phone, m.customer.name) == (
        BUSINESS,
        "15551234567",
        "Ana",
    )
    media = inbound(
        "15551234567",
        sid,
        "the invoice",
        NumMedia="1",
        MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME1",
        MediaContentType0="application/pdf",
    )
    (m,) = twilio.parse_form(media, 0)[0]
    assert isinstance(m.content, Document) and m.content.caption == "the invoice"
    photo = inbound(
        "15551234567",
        sid,
        "",
        NumMedia="1",
        MediaUrl0="https://x/1",
        MediaContentType0="image/jpeg",
    )
    assert isinstance(twilio.parse_form(photo, 0)[0][0].content, Image)  # type: ignore[union-attr]
    tap = inbound(
        "15551234567",
        sid,
        "Talk to a person",
        ButtonPayload="agent",
        ButtonText="Talk to a person",
        MessageType="button",
    )
    assert twilio.parse_form(tap, 0)[0][0].content == ButtonReply("agent", "Talk to a person")  # type: ignore[union-attr]
    place = inbound(
        "15551234567",
        sid,
        "",
        Latitude="12.97",
        Longitude="77.59",
        Label="Shop",
        Address="MG Road",
        MessageType="location",
    )
    assert twilio.parse_form(place, 0)[0][0].content == Location(12.97, 77.59, "Shop", "MG Road")  # type: ignore[union-attr]
    status = {
        "MessageSid": sid,
        "MessageStatus": "undelivered",
        "ErrorCode": "63024",
        "From": f"whatsapp:{BUSINESS}",
        "To": "whatsapp:+15551234567",
        "AccountSid": ACCOUNT,
    }
    (s,) = twilio.parse_form(status, 0)[0]
    assert isinstance(s, StatusUpdate) and (s.status, s.errors[0].code) == ("failed", 63024)
    assert twilio.parse_form({**status, "MessageStatus": "queued"}, 0) == ([], [])
    for bad in ({}, {"MessageSid": "x"}, {**inbound("1555", sid), "From": "+15551234567"}):
        events, problems = twilio.parse_form(bad, 0)
        assert events == [] and problems


class Both:
    """One engine serving Meta and Twilio at once, with a fake of each provider."""

    def __init__(self, client: Any, graph: FakeGraph, fake: FakeTwilio) -> None:
        self.client, self.graph, self.twilio = client, graph, fake
        self.engine = client.app[ENGINE]

    async def post(self, fields: dict[str, str], path: str = "/webhooks/twilio") -> Any:
        raw, headers = signed_form(PUBLIC + path, fields)
        return await self.client.post(path, data=io.BytesIO(raw), headers=headers)

    async def settle(self) -> None:
        await self.engine.actors.wait_idle()
        await self.engine.delivery.wait_empty()

    def bodies(self) -> list[str]:
        return [r["form"].get("Body", "") for r in self.twilio.requests]


@pytest.fixture
async def twilio_api() -> AsyncIterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    server = TestServer(fake.app())
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def both(
    start_app: AppFactory,
    env: dict[str, str],
    graph: tuple[FakeGraph, str],
    twilio_api: tuple[FakeTwilio, str],
) -> Both:
    fake, url = twilio_api
    env.update(
        TWILIO_ACCOUNT_SID=ACCOUNT,
        TWILIO_AUTH_TOKEN=TOKEN,
        TWILIO_WHATSAPP_FROM=f"whatsapp:{BUSINESS}",
        TWILIO_API_URL=url,
        PUBLIC_URL=PUBLIC,
    )
    return Both(await start_app(env), graph[0], fake)


async def test_a_signed_twilio_message_is_answered_through_the_twilio_api(both: Both) -> None:
    r = await both.post(inbound("15551234567", "SM" + "1" * 32, "hi"))
    assert r.status == 200 and r.content_type == "text/xml"
    assert "<Response></Response>" in await r.text()
    await both.settle()
    (sent,) = both.twilio.requests
    assert sent["auth_ok"] and sent["account"] == ACCOUNT
    form = sent["form"]
    assert (form["From"], form["To"]) == (f"whatsapp:{BUSINESS}", "whatsapp:+15551234567")
    assert form["Body"].startswith("Hi Ana! Welcome to Acme Supplies.")
    assert "- Talk to a person" in form["Body"]  # buttons as text: the customer types one
    assert form["StatusCallback"].startswith(f"{HOOK}?ref=r:SM")
    assert both.graph.requests == []  # nothing went to Meta
    # The same message again (Twilio retried): acknowledged, not answered twice.
    assert (await both.post(inbound("15551234567", "SM" + "1" * 32, "hi"))).status == 200
    await both.settle()
    assert len(both.twilio.requests) == 1
    # A tap on a quick reply button.
    tap = inbound(
        "15551234567",
        "SM" + "2" * 32,
        "Talk to a person",
        ButtonPayload="agent",
        ButtonText="Talk to a person",
    )
    assert (await both.post(tap)).status == 200
    await both.settle()
    assert both.bodies()[-1].startswith("I'm passing you to a member of our team.")


async def test_status_callbacks_climb_the_ladder_and_claim_their_message(both: Both) -> None:
    await both.post(inbound("15551234568", "SM" + "3" * 32, "hi"))
    await both.settle()
    (sent,) = both.twilio.requests
    callback = sent["form"]["StatusCallback"].removeprefix(PUBLIC)
    for state in ("sent", "read", "delivered"):  # delivered after read: never backwards
        status = {
            "MessageSid": sent["sid"],
            "MessageStatus": state,
            "AccountSid": ACCOUNT,
            "From": f"whatsapp:{BUSINESS}",
            "To": "whatsapp:+15551234568",
            "ChannelPrefix": "whatsapp",
            "ApiVersion": "2010-04-01",
        }
        assert (await both.post(status, callback)).status == 200
    view = await both.engine.view(f"{BUSINESS}:15551234568")
    out = [m for m in view["messages"] if m["direction"] == "out"]
    assert [(m["id"], m["status"]) for m in out] == [(sent["sid"], "read")]


async def test_one_engine_answers_each_channel_on_its_own(both: Both) -> None:
    raw, headers = signed(body(change([text("15551234569", "wamid.M1", "hi")])))
    assert (
        await both.client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    ).status == 200
    assert (await both.post(inbound("15551234569", "SM" + "4" * 32, "hi"))).status == 200
    await both.settle()
    assert len(both.graph.requests) == 1 and both.graph.requests[0]["body"]["to"] == "+15551234569"
    assert len(both.twilio.requests) == 1
    r = await both.client.get(
        "/api/conversations/15551234569", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert r.status == 200  # the same customer on two numbers: WHATSAPP_PHONE_NUMBER_ID's
    assert (await r.json())["number"] == "106540352242922"
    r = await both.client.get(
        "/api/conversations/15551234569",
        params={"number": BUSINESS},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status == 200 and (await r.json())["number"] == BUSINESS


@pytest.mark.parametrize(
    ("fields", "headers", "status"),
    [
        ("good", {"X-Twilio-Signature": ""}, 401),
        ("good", {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}, 403),
        ("forged", None, 403),
        ("bytes", None, 200),
        ("nosid", None, 200),
        ("notwhatsapp", None, 200),
    ],
)
async def test_forged_unsigned_and_bad_requests_never_get_a_500(
    both: Both,
    fields: str,
    headers: dict[str, str] | None,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = inbound("15551234570", "SM" + "5" * 32, "hi")
    if fields == "bytes":  # not UTF-8, signed as it is: read with U+FFFD, never a crash
        raw = (
            b"MessageSid=SM"
            + b"6" * 32
            + b"&Body=%FF%FE\xff&From=whatsapp%3A%2B15551234570&To=whatsapp%3A%2B14155238886"
        )
        from urllib.parse import parse_qs

        pairs = [(k, v[0]) for k, v in parse_qs(raw.decode("utf-8", "replace")).items()]
        sig = signed_form(HOOK, pairs)[1]["X-Twilio-Signature"]
        r = await both.client.post(
            "/webhooks/twilio",
            data=raw,
            headers={
                "X-Twilio-Signature": sig,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
    else:
        form = {
            "good": good,
            "forged": {**good, "Body": "transfer all"},
            "nosid": {**good, "MessageSid": "../../etc"},
            "notwhatsapp": {**good, "From": "+15551234570"},
        }[fields]
        raw, signed_headers = signed_form(HOOK, good if fields == "forged" else form)
        if fields == "forged":
            from urllib.parse import urlencode

            raw = urlencode(form).encode()
        r = await both.client.post(
            "/webhooks/twilio", data=io.BytesIO(raw), headers={**signed_headers, **(headers or {})}
        )
    assert r.status == status
    assert not any(rec.levelno >= logging.ERROR for rec in caplog.records)


async def test_twilio_webhooks_without_public_url_are_refused_and_the_log_says_why(
    start_app: AppFactory, env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    env.update(TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)
    client = await start_app(env)
    raw, headers = signed_form(HOOK, inbound("15551234571", "SM" + "7" * 32, "hi"))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            r = await client.post("/webhooks/twilio", data=io.BytesIO(raw), headers=headers)
            assert r.status == 403 and "PUBLIC_URL not set" in await r.text()
    said = [
        rec.getMessage()
        for rec in caplog.records
        if "Twilio webhook was refused" in rec.getMessage()
    ]
    assert said == ["a Twilio webhook was refused: PUBLIC_URL not set"]
    assert (await client.get("/healthz")).status == 200  # the process runs on


@pytest.mark.parametrize(
    ("code", "status", "outcome"),
    [
        (63016, 400, "failed"),  # outside the window, no fallback
        (63024, 400, "failed"),  # not a WhatsApp number
        (21211, 400, "failed"),  # not a valid To
        (21610, 400, "failed"),  # replied STOP: an opt-out
        (63018, 429, "paused"),  # over the rate: the number pauses
        (20003, 401, "paused"),  # credentials
        (30001, 500, "paused"),  # Twilio down
    ],
)
async def test_twilio_error_codes_are_handled_like_their_meta_counterparts(
    both: Both, code: int, status: int, outcome: str
) -> None:
    both.twilio.answer_next(twilio_error(code, "no", status))
    await both.post(inbound("15551234572", "SM" + "8" * 32, "hi"))
    await both.engine.actors.wait_idle()
    for _ in range(100):
        if both.twilio.requests and (not both.engine.delivery.busy()):
            break
        await asyncio.sleep(0.01)
    await both.engine.delivery.wait_quiet()
    view = await both.engine.view(f"{BUSINESS}:15551234572")
    (reply,) = [m for m in view["messages"] if m["direction"] == "out"]
    if outcome == "failed":
        assert reply["status"] == "failed" and reply["error"]["code"] == code
    else:
        assert reply["status"] == "pending"
        assert [p.number for p in both.engine.delivery.paused()] == [BUSINESS]
    if code == 21610:
        await both.engine.actors.wait_idle()
        assert both.engine.metrics.opt_outs.get("stopped") == 1


def test_templates_go_as_content_sid_and_variables() -> None:
    from engine.outbound import MediaMessage, ReactionMessage, TemplateMessage
    from engine.ports import Outgoing

    t = TemplateMessage("cart", "en", "Hi Ana", params=("Ana", "3"), content_sid="HX" + "0" * 32)
    form = twilio.form_of(Outgoing("r:1:0", "c", BUSINESS, "15551234567", None, t), PUBLIC)
    assert form["ContentSid"] == "HX" + "0" * 32
    assert form["ContentVariables"] == '{"1": "Ana", "2": "3"}'
    assert "Body" not in form
    named = TemplateMessage("o", "en", "x", named=(("number", "7"),), content_sid="HX" + "1" * 32)
    out = Outgoing("r:1:0", "c", BUSINESS, "15551234567", None, named)
    assert twilio.form_of(out, None)["ContentVariables"] == '{"number": "7"}'
    for unsendable in (
        TemplateMessage("no_sid", "en", "x"),
        MediaMessage("document", file="inv.pdf"),
        ReactionMessage("SM1", "👍"),
    ):
        with pytest.raises(twilio.PermanentDelivery):
            twilio.form_of(Outgoing("r:1:0", "c", BUSINESS, "1555", None, unsendable), None)


async def test_a_paused_twilio_number_is_degraded_in_readyz(both: Both) -> None:
    both.twilio.answer_next(*[twilio_error(30001, "Queue overflow", 503)] * 3)
    await both.post(inbound("15551234573", "SM" + "9" * 32, "hi"))
    await both.engine.actors.wait_idle()
    for _ in range(200):
        if both.engine.delivery.paused():
            break
        await asyncio.sleep(0.01)
    r = await both.client.get("/readyz")
    report = await r.json()
    assert r.status == 200
    assert report["twilio"].startswith(f"degraded: outage on number {BUSINESS} since ")
    assert report["whatsapp"] == "ok"


async def test_long_replies_fit_twilio_s_1600_characters(both: Both) -> None:
    await both.post(inbound("15551234574", "SM" + "a" * 32, "hi"))
    await both.settle()
    r = await both.client.post(
        "/api/conversations/15551234574/messages",
        json={"text": " ".join(["lorem"] * 1000)},  # 5,999 characters
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status == 200
    await both.settle()
    bodies = both.bodies()[1:]
    assert len(bodies) >= 4 and all(len(b) <= 1600 for b in bodies)
    assert " ".join(bodies).split() == ["lorem"] * 1000  # nothing lost


async def test_after_stop_nothing_is_sent_until_the_customer_writes_again(both: Both) -> None:
    """21610: Twilio refuses every message to a customer who replied STOP, so the engine sends
    none (recorded as not sent) until the customer writes again."""
    await both.post(inbound("15551234575", "SM" + "b" * 32, "hi"))
    await both.settle()
    both.twilio.answer_next(twilio_error(21610, "Attempt to send to unsubscribed recipient"))
    auth = {"Authorization": f"Bearer {ADMIN}"}
    path = "/api/conversations/15551234575/messages"
    await both.client.post(path, json={"text": "one"}, headers=auth)
    await both.settle()
    r = await both.client.post(path, json={"text": "two"}, headers=auth)
    assert (await r.json())["messages"][0]["error"].startswith("the customer replied STOP")
    await both.settle()
    assert both.bodies()[-1] == "one"  # "two" was never sent
    await both.post(inbound("15551234575", "SM" + "c" * 32, "START"))
    await both.settle()
    await both.client.post(path, json={"text": "three"}, headers=auth)
    await both.settle()
    assert both.bodies()[-1] == "three"
    assert both.engine.metrics.not_sent.get("stop") == 1


def test_a_media_count_without_a_url_is_text() -> None:
    form = inbound("15551234567", "SM" + "d" * 32, "see", NumMedia="1")
    assert twilio.parse_form(form, 0)[0][0].content == Text("see")  # type: ignore[union-attr]


def test_a_twilio_template_with_header_or_url_values_is_refused_before_sending() -> None:
    from engine.outbound import TemplateMessage
    from engine.ports import Outgoing

    t = TemplateMessage(
        "cart",
        "en",
        "x",
        params=("a",),
        header=("image", "https://x/y.jpg"),
        content_sid="HX" + "0" * 32,
    )
    with pytest.raises(twilio.PermanentDelivery, match="ContentVariables only"):
        twilio.form_of(Outgoing("r:1:0", "c", BUSINESS, "15551234567", None, t), None)
