"""The admin and agent API: auth, conversations, agent replies, handoff, release, expiry."""

from __future__ import annotations

import io
from typing import Any

import pytest

from adapters.web import ENGINE
from tests.conftest import AppFactory
from tests.fakes.clock import FakeClock
from tests.fakes.graph import FakeGraph
from tests.support import ADMIN, body, button, change, signed, text

AUTH = {"Authorization": f"Bearer {ADMIN}"}


class Api:
    def __init__(self, client: Any, fake: FakeGraph, clock: FakeClock) -> None:
        self.client, self.fake, self.clock = client, fake, clock
        self.engine = client.app[ENGINE]

    async def say(self, phone: str, wamid: str, words: str) -> list[str]:
        """The customer writes; return the texts the bot sent back."""
        before = len(self.fake.requests)
        raw, headers = signed(body(change([text(phone, wamid, words)])))
        assert (
            await self.client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
        ).status == 200
        await self.settle()
        return [_text_of(r["body"]) for r in self.fake.requests[before:]]

    async def tap(self, phone: str, wamid: str, button_id: str, title: str) -> list[str]:
        before = len(self.fake.requests)
        raw, headers = signed(body(change([button(phone, wamid, button_id, title)])))
        assert (
            await self.client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
        ).status == 200
        await self.settle()
        return [_text_of(r["body"]) for r in self.fake.requests[before:]]

    async def settle(self) -> None:
        await self.engine.actors.wait_idle()
        await self.engine.delivery.wait_empty()

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        r = await self.client.get(path, params=params, headers=AUTH)
        return r.status, await r.json()

    async def post(self, path: str, data: Any = None) -> tuple[int, Any]:
        r = await self.client.post(path, json=data, headers=AUTH)
        result = r.status, await r.json()
        await self.settle()
        return result


def _text_of(b: dict[str, Any]) -> str:
    return str(b["text"]["body"] if b["type"] == "text" else b["interactive"]["body"]["text"])


@pytest.fixture
async def api(start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]) -> Api:
    clock = FakeClock()
    env["HANDOFF_TTL"] = "2h"
    return Api(await start_app(env, clock=clock), graph[0], clock)


async def test_api_refuses_without_configured_token(
    start_app: AppFactory, env: dict[str, str]
) -> None:
    del env["ADMIN_TOKEN"]
    client = await start_app(env)
    r = await client.get("/api/conversations", headers=AUTH)
    assert r.status == 403 and "ADMIN_TOKEN" in (await r.json())["error"]


async def test_api_needs_the_bearer_token(api: Api) -> None:
    assert (await api.client.get("/api/conversations")).status == 401
    wrong = await api.client.get("/api/conversations", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert (
        await api.client.get("/api/conversations", headers={"Authorization": ADMIN})
    ).status == 401
    assert (await api.get("/api/conversations"))[0] == 200


async def test_list_and_show_conversations(api: Api) -> None:
    await api.say("15550000001", "w1", "hi")
    await api.say("15550000002", "w2", "hi")
    await api.tap("15550000002", "w3", "agent", "Talk to a person")
    status, listing = await api.get("/api/conversations")
    assert status == 200
    assert {(c["contact"], c["state"], c["handoff"]) for c in listing["conversations"]} == {
        ("15550000001", "menu", False),
        ("15550000002", "handoff", True),
    }
    _, held = await api.get("/api/conversations", handoff="true")
    assert [c["contact"] for c in held["conversations"]] == ["15550000002"]
    _, in_menu = await api.get("/api/conversations", state="menu")
    assert [c["contact"] for c in in_menu["conversations"]] == ["15550000001"]
    status, view = await api.get("/api/conversations/15550000002")
    assert status == 200
    assert (view["contact"], view["flow"], view["state"], view["handoff"], view["slots"]) == (
        "15550000002",
        "support",
        "handoff",
        True,
        {"unknowns": 0},  # the support flow counts questions it could not answer
    )
    assert [(m["direction"], m["type"]) for m in view["messages"]] == [
        ("in", "text"),
        ("out", "buttons"),
        ("in", "button_reply"),
        ("out", "text"),
    ]
    assert all(m["at"].endswith("Z") for m in view["messages"])
    assert (await api.get("/api/conversations/+15550000002"))[0] == 200  # a leading + is fine


async def test_unknown_contact_bad_filters_and_bad_bodies(api: Api) -> None:
    assert (await api.get("/api/conversations/19999999999"))[0] == 404
    assert (await api.get("/api/conversations", handoff="maybe"))[0] == 400
    await api.say("15550000003", "w1", "hi")
    assert (await api.post("/api/conversations/15550000003/messages", {"text": "  "}))[0] == 400
    assert (await api.post("/api/conversations/15550000003/messages", ["text"]))[0] == 400
    r = await api.client.post("/api/conversations/15550000003/messages", data=b"{", headers=AUTH)
    assert r.status == 400


async def test_one_customer_on_two_numbers_needs_the_number(api: Api) -> None:
    for number in ("111111111111111", "222222222222222"):
        raw, headers = signed(
            body(change([text("15550000004", f"w-{number}", "hi")], number=number))
        )
        await api.client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    await api.settle()
    status, error = await api.get("/api/conversations/15550000004")
    assert status == 409 and error["numbers"] == ["111111111111111", "222222222222222"]
    status, view = await api.get("/api/conversations/15550000004", number="222222222222222")
    assert status == 200 and view["number"] == "222222222222222"


async def test_an_agent_reply_takes_the_conversation_and_the_bot_goes_silent(api: Api) -> None:
    await api.say("15550000005", "w1", "hi")
    status, result = await api.post(
        "/api/conversations/15550000005/messages", {"text": "Hi, Maria here."}
    )
    assert status == 200 and result["handoff"] is True
    await api.settle()
    assert _text_of(api.fake.requests[-1]["body"]) == "Hi, Maria here."
    assert api.fake.requests[-1]["body"]["biz_opaque_callback_data"].startswith("a:")
    assert await api.say("15550000005", "w2", "thanks Maria") == []  # the bot never speaks
    _, view = await api.get("/api/conversations/15550000005")
    assert view["handoff"] is True
    assert [m["text"] for m in view["messages"]][-2:] == ["Hi, Maria here.", "thanks Maria"]


async def test_release_hands_back_and_the_next_message_starts_the_flow(api: Api) -> None:
    await api.say("15550000006", "w1", "hi")
    assert await api.tap("15550000006", "w2", "agent", "Talk to a person") == [
        "I'm passing you to a member of our team. They will reply here as soon as they can."
    ]
    assert await api.say("15550000006", "w3", "hello?") == []
    status, result = await api.post("/api/conversations/15550000006/release")
    assert status == 200 and result == {"handoff": False}
    assert await api.say("15550000006", "w4", "hello again") == [
        "Hi Ana! Welcome to Acme Supplies. How can we help you today?"
    ]


async def test_the_bot_takes_back_a_conversation_after_handoff_ttl(api: Api) -> None:
    """HANDOFF_TTL is measured from the last agent activity; when it runs out the bot takes the
    conversation back at once and says so, without waiting for the customer's next message."""
    await api.say("15550000007", "w1", "hi")
    await api.post("/api/conversations/15550000007/messages", {"text": "Maria here."})
    await api.clock.advance(3600)
    assert await api.say("15550000007", "w2", "still there?") == []
    await api.post("/api/conversations/15550000007/messages", {"text": "Yes!"})  # renews the hold
    await api.clock.advance(7199)
    assert await api.say("15550000007", "w3", "ok") == []
    before = len(api.fake.requests)
    await api.clock.advance(2)
    await api.settle()
    assert [_text_of(r["body"]) for r in api.fake.requests[before:]] == [
        "Our team has handed this conversation back to the assistant. Send a message any time."
    ]
    assert api.engine.metrics.releases.get("expired") == 1
    _, view = await api.get("/api/conversations/15550000007")
    assert view["handoff"] is False
    assert await api.say("15550000007", "w4", "hello?") == [
        "Hi Ana! Welcome to Acme Supplies. How can we help you today?"
    ]


async def test_long_agent_text_is_split_not_refused(api: Api) -> None:
    await api.say("15550000008", "w1", "hi")
    words = " ".join(["lorem"] * 1000)  # 5,999 characters: two messages
    status, result = await api.post("/api/conversations/15550000008/messages", {"text": words})
    assert status == 200 and len(result["ids"]) == 2
    await api.settle()
    assert " ".join(_text_of(r["body"]) for r in api.fake.requests[-2:]) == words


async def test_a_long_transcript_is_returned_up_to_10000_messages(api: Api) -> None:
    """The last 200 by default, the last `limit` up to 10,000, in order."""
    from engine.ports import Commit, MessageRow

    await api.say("15550000011", "w0", "hi")
    key = await api.engine.find("15550000011", None)
    row = await api.engine.store.conversation(key)
    assert row is not None
    history = [
        MessageRow(f"h{i}", key, "in", row.number, "text", f"line {i}", "received", 2.0 + i)
        for i in range(12_000)
    ]
    await api.engine.store.write([Commit(row, history)])
    status, view = await api.get("/api/conversations/15550000011")
    assert status == 200 and len(view["messages"]) == 200
    assert view["messages"][-1]["text"] == "line 11999"
    status, view = await api.get("/api/conversations/15550000011", limit="10000")
    assert status == 200 and len(view["messages"]) == 10_000
    assert [m["text"] for m in view["messages"][:2]] == ["line 2000", "line 2001"]
    status, view = await api.get("/api/conversations/15550000011", limit="50000")
    assert len(view["messages"]) == 10_000  # at most 10,000
    status, error = await api.get("/api/conversations/15550000011", limit="lots")
    assert status == 400 and "whole number" in error["error"]


async def test_whatsapp_phone_number_id_picks_the_number_for_a_contact_on_several(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    """Without ?number=, a contact known by several business numbers is the one the default
    number (WHATSAPP_PHONE_NUMBER_ID) talks to; an agent's reply leaves through it."""
    env["WHATSAPP_PHONE_NUMBER_ID"] = "222222222222222"
    api = Api(await start_app(env, clock=FakeClock()), graph[0], FakeClock())
    for number in ("111111111111111", "222222222222222", "333333333333333"):
        raw, headers = signed(
            body(change([text("15550000012", f"w-{number}", "hi")], number=number))
        )
        await api.client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)
    await api.settle()
    status, view = await api.get("/api/conversations/15550000012")
    assert status == 200 and view["number"] == "222222222222222"
    status, view = await api.get("/api/conversations/15550000012", number="111111111111111")
    assert status == 200 and view["number"] == "111111111111111"  # ?number= still decides
    before = len(api.fake.requests)
    status, _ = await api.post("/api/conversations/15550000012/messages", {"text": "From us"})
    assert status == 200
    assert [r["number"] for r in api.fake.requests[before:]] == ["222222222222222"]


async def test_an_agent_sends_an_approved_template(api: Api) -> None:
    """{"template": ...} is checked against templates.yaml (400 saying what does not match)
    and goes as a template message, named values and quick-reply payloads included."""
    await api.say("15550000020", "w1", "hi")
    path = "/api/conversations/15550000020/messages"
    status, error = await api.post(path, {"template": {"name": "follow_upp"}})
    assert status == 400 and "no template 'follow_upp'" in error["error"]
    assert "conversation_handed_back, follow_up" in error["error"]
    status, error = await api.post(path, {"template": {"name": "follow_up", "params": ["x"]}})
    assert status == 400 and "takes named values: name, topic" in error["error"]
    status, error = await api.post(path, {"template": {"name": "follow_up", "params": 7}})
    assert status == 400
    status, error = await api.post(path, {"template": {"name": "follow_up", "colour": "red"}})
    assert status == 400 and "unknown key 'colour'" in error["error"]
    good = {"name": "follow_up", "params": {"name": "Ana", "topic": "tiles"}}
    status, result = await api.post(path, {"template": good})
    assert status == 200 and result["messages"][0]["type"] == "template"
    sent = api.fake.requests[-1]["body"]
    assert sent["type"] == "template"
    assert sent["template"]["components"] == [
        {
            "type": "body",
            "parameters": [
                {"type": "text", "parameter_name": "name", "text": "Ana"},
                {"type": "text", "parameter_name": "topic", "text": "tiles"},
            ],
        },
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": "talk_to_a_person"}],
        },
    ]
    _, view = await api.get("/api/conversations/15550000020")
    assert view["messages"][-1]["text"] == (
        "Hi Ana, you asked us about tiles. Reply here if you still need help."
    )


async def test_an_agent_reply_after_a_day_goes_as_its_template_or_not_at_all(api: Api) -> None:
    """A day after the customer's last message, text alone is recorded as not sent (the
    answer says so); text with a template sends the template."""
    await api.say("15550000021", "w1", "hi")
    await api.clock.advance(25 * 3600)
    path = "/api/conversations/15550000021/messages"
    status, result = await api.post(path, {"text": "Sorry for the wait!"})
    assert status == 200
    assert result["messages"][0]["status"] == "failed"
    assert result["messages"][0]["error"] == "outside the 24-hour window"
    before = len(api.fake.requests)
    fallback = {"name": "follow_up", "params": {"name": "Ana", "topic": "your order"}}
    status, result = await api.post(path, {"text": "Sorry for the wait!", "template": fallback})
    assert status == 200 and result["messages"][0]["type"] == "template"
    assert [r["body"]["type"] for r in api.fake.requests[before:]] == ["template"]
