"""Delivery through the Cloud API sender to a fake Graph API, on a clock the tests move by hand:
order per contact, outages and throttling as a state of the number, tokens, age, errors."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import itertools
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.channels.whatsapp import AccessToken, CloudApiSender, graph_body, outcome
from engine.committer import Committer
from engine.delivery import Delivery
from engine.errors import ChannelDown, PermanentDelivery, RetryableDelivery
from engine.memstore import MemoryStore
from engine.metrics import Metrics
from engine.outbound import (
    Button,
    ButtonsMessage,
    ListMessage,
    Row,
    Section,
    TemplateMessage,
    TextMessage,
    to_json,
)
from engine.ports import Commit, ConversationRow, MessageRow, Outgoing, Sending
from engine.settings import Secret
from tests.fakes.clock import FakeClock
from tests.fakes.graph import FakeGraph, meta_error

NUMBER = "106540352242922"
CONTACTS = "abcdefghij"


def row(
    id_: str,
    contact: str,
    text: str,
    phone: str | None = "15550001",
    user_id: str | None = None,
    *,
    fallback: TemplateMessage | None = None,
    until: float = 0.0,
    flow: str | None = None,
    state: str | None = None,
) -> MessageRow:
    return MessageRow(
        id_,
        contact,
        "out",
        NUMBER,
        "text",
        text,
        "pending",
        1_800_000_000.0,
        payload=json.dumps(
            {
                "message": to_json(TextMessage(text, fallback)),
                "phone": phone,
                "user_id": user_id,
                "until": until,
                "flow": flow,
                "state": state,
            }
        ),
    )


def texts_to(graph: FakeGraph, contact: str, accepted_only: bool = True) -> list[str]:
    return [
        r["body"]["text"]["body"]
        for r in graph.requests
        if r["body"]["type"] == "text"
        and r["body"]["text"]["body"].startswith(f"{contact}-")
        and (r["wamid"] or not accepted_only)
    ]


class Rig:
    def __init__(
        self,
        graph: FakeGraph,
        delivery: Delivery,
        store: MemoryStore,
        metrics: Metrics,
        clock: FakeClock,
    ) -> None:
        self.graph, self.delivery, self.store = graph, delivery, store
        self.metrics, self.clock = metrics, clock

    async def settle(self) -> None:
        """Until no send is under way and no contact is ready for one (real I/O included)."""
        for _ in range(1000):
            for _ in range(5):
                await asyncio.sleep(0)
            if not self.delivery.busy():
                return
            await self.delivery.wait_quiet()
        raise AssertionError("delivery never settled")

    async def queue(self, rows: list[MessageRow]) -> None:
        for contact in dict.fromkeys(r.contact for r in rows):
            await self.store.write(
                [
                    Commit(
                        ConversationRow(contact, NUMBER, "f", "s", False, 1.0, {"v": 1}),
                        [r for r in rows if r.contact == contact],
                    )
                ]
            )
        self.delivery.enqueue([dataclasses.replace(r, at=self.clock.now()) for r in rows])
        await self.settle()

    async def run(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(round(seconds / step)):
            await self.clock.advance(step)

    async def until_empty(self, limit: float = 3600.0, step: float = 1.0) -> float:
        """Move time until every message is settled; return the simulated seconds it took."""
        started = self.clock.now()
        while self.delivery.pending:
            if self.clock.now() - started > limit:
                raise AssertionError(f"{self.delivery.pending} still pending after {limit}s")
            await self.clock.advance(step)
        return self.clock.now() - started

    async def message(self, id_: str) -> MessageRow:
        rows = [m for c in CONTACTS for m in await self.store.transcript(c, 1000)]
        return next(m for m in rows if m.id == id_)

    async def statuses(self) -> set[str]:
        return {m.status for c in CONTACTS for m in await self.store.transcript(c, 1000)}


@contextlib.asynccontextmanager
async def make_rig(
    graph: tuple[FakeGraph, str],
    token: AccessToken,
    max_age: float = 86400.0,
    on_opt_out: Any = lambda contact, seconds, every: None,
    *,
    concurrency: int = 8,
    rate: float | None = 80.0,
) -> AsyncIterator[Rig]:
    fake, url = graph
    clock = FakeClock()
    fake.clock = clock.now
    store, metrics = MemoryStore(), Metrics()
    committer = Committer(store, metrics)
    committer.start()
    async with aiohttp.ClientSession() as session:
        sender = CloudApiSender(session, url, token)
        delivery = Delivery(
            sender,
            committer,
            metrics,
            clock=clock,
            concurrency=concurrency,
            max_age=max_age,
            rand=lambda: 1.0,
            on_opt_out=on_opt_out,
            rate=rate,
        )
        rig = Rig(fake, delivery, store, metrics, clock)
        clock.settle = rig.settle
        delivery.start()
        yield rig
        await delivery.stop(1.0)
    await committer.close()


@pytest.fixture
async def rig(graph: tuple[FakeGraph, str]) -> AsyncIterator[Rig]:
    async with make_rig(graph, AccessToken(Secret("tok"))) as r:
        yield r


def probe_gaps(graph: FakeGraph, since: float, until: float) -> list[float]:
    """Seconds between the requests the provider refused in [since, until]."""
    times = [r["received"] for r in graph.requests if since <= r["received"] <= until]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_each_contacts_messages_reach_the_provider_in_order(rig: Rig) -> None:
    """With 8 workers and random provider latency, every contact's order is kept."""
    random.seed(7)
    rig.graph.latency = 0.002
    await rig.queue([row(f"{c}:{i}", c, f"{c}-{i}") for i in range(20) for c in "abc"])
    await rig.until_empty()
    for contact in "abc":
        assert texts_to(rig.graph, contact) == [f"{contact}-{i}" for i in range(20)]
    assert rig.graph.requests[0]["auth"] == "Bearer tok"
    assert rig.graph.requests[0]["number"] == NUMBER


@pytest.mark.parametrize(
    "failure",
    [
        meta_error(2, "Temporary downtime", 503),
        meta_error(1, "An unknown error occurred", 500),
        (502, "<html>Bad Gateway</html>"),
    ],
    ids=["code 2", "code 1", "bare 502"],
)
async def test_a_ten_minute_outage_loses_no_reply(rig: Rig, failure: tuple[Any, ...]) -> None:
    """Ten minutes of a failing provider: the number pauses, probes at most every 30 s, and
    every reply goes out afterwards, in order, none recorded as failed."""
    rows = [row(f"{c}:{i}", c, f"{c}-{i}") for i in range(4) for c in CONTACTS]
    rig.graph.failing = failure
    started = rig.clock.now()
    await rig.queue(rows)
    await rig.run(600)
    (paused,) = rig.delivery.paused()
    assert paused.cause == "outage" and paused.number == NUMBER
    assert await rig.statuses() == {"pending"}
    gaps = probe_gaps(rig.graph, started + 1, rig.clock.now())
    assert gaps and max(gaps) <= 30.0, gaps
    refused = len(rig.graph.requests)
    assert refused < 40, "while paused only probes go out, not every message"

    rig.graph.failing = None
    assert await rig.until_empty() <= 30.0
    assert rig.delivery.paused() == []
    assert await rig.statuses() == {"accepted"}
    for contact in CONTACTS:
        assert texts_to(rig.graph, contact) == [f"{contact}-{i}" for i in range(4)]
    assert rig.metrics.outbound.get("failed", "") == 0
    assert rig.metrics.pauses.get("outage") == 1
    assert rig.metrics.probes.get("ok") == 1 and rig.metrics.probes.get("failed") >= 20


async def test_two_minutes_of_429_pause_the_number_and_honour_retry_after(rig: Rig) -> None:
    """A stream of 429s (Retry-After: 1) for two minutes: probes every second, nothing lost."""
    throttled = (*meta_error(130429, "Rate limit hit", 429), {"Retry-After": "1"})
    rig.graph.failing = throttled
    await rig.queue([row(f"{c}:{i}", c, f"{c}-{i}") for i in range(3) for c in "abcde"])
    await rig.run(120)
    (paused,) = rig.delivery.paused()
    assert paused.cause == "throttled" and "130429" in paused.detail
    gaps = probe_gaps(rig.graph, rig.clock.now() - 100, rig.clock.now())
    assert gaps and max(gaps) <= 1.0, gaps
    rig.graph.failing = None
    assert await rig.until_empty() <= 2.0
    assert await rig.statuses() == {"accepted"}
    for contact in "abcde":
        assert texts_to(rig.graph, contact) == [f"{contact}-{i}" for i in range(3)]


async def test_a_revoked_token_pauses_the_number_until_the_renewed_token_is_in_the_file(
    graph: tuple[FakeGraph, str], tmp_path: Path
) -> None:
    """Error 190 is the channel's problem: nothing fails, probes re-read the token file, and
    once it holds a token the provider accepts, every reply goes out in order."""
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    async with make_rig(graph, AccessToken(path=token_file)) as rig:
        rig.graph.token = "first-token"
        await rig.queue([row("a:0", "a", "a-0")])
        await rig.until_empty()
        rig.graph.token = "renewed-token"  # Meta expired the first one
        await rig.queue([row(f"{c}:{i}", c, f"{c}-{i}") for i in range(1, 4) for c in "abc"])
        await rig.run(3600)  # an hour before anyone renews it
        (paused,) = rig.delivery.paused()
        assert paused.cause == "auth" and "190" in paused.detail
        assert await rig.statuses() == {"accepted", "pending"}
        assert max(probe_gaps(rig.graph, rig.clock.now() - 3000, rig.clock.now())) <= 30.0
        token_file.write_text("renewed-token")
        assert await rig.until_empty() <= 30.0
        assert await rig.statuses() == {"accepted"}
        assert rig.graph.requests[-1]["auth"] == "Bearer renewed-token"
        for contact in "abc":
            want = [f"{contact}-{i}" for i in range(1 if contact != "a" else 0, 4)]
            assert texts_to(rig.graph, contact) == want
        assert rig.metrics.outbound.get("failed", "190") == 0


async def test_a_token_fixed_on_the_provider_side_resumes_the_number(rig: Rig) -> None:
    """With the token in the environment, a permission restored at Meta resumes sending."""
    rig.graph.answer_next(meta_error(10, "Permission denied", 403))
    await rig.queue([row("a:0", "a", "a-0"), row("a:1", "a", "a-1")])
    assert rig.delivery.paused()[0].cause == "auth"
    assert await rig.until_empty() <= 2.0
    assert texts_to(rig.graph, "a") == ["a-0", "a-1"]


async def test_time_paused_does_not_age_a_message(graph: tuple[FakeGraph, str]) -> None:
    """With SEND_MAX_AGE at 10 minutes, a 30-minute outage gives nothing up."""
    async with make_rig(graph, AccessToken(Secret("tok")), max_age=600) as rig:
        rig.graph.failing = meta_error(2, "Temporary downtime", 503)
        await rig.queue([row("a:0", "a", "a-0"), row("b:0", "b", "b-0")])
        await rig.run(1800, step=5.0)
        rig.graph.failing = None
        await rig.until_empty()
        assert await rig.statuses() == {"accepted"}


async def test_a_message_the_provider_keeps_refusing_for_its_recipient_is_given_up_by_age(
    graph: tuple[FakeGraph, str],
) -> None:
    """The pair rate (131056) makes only that contact wait, 4^n seconds; past SEND_MAX_AGE of
    up-time the message is recorded as failed, and the contact's next message goes out."""
    async with make_rig(graph, AccessToken(Secret("tok")), max_age=600) as rig:
        pair_rate = meta_error(131056, "Pair rate limit hit")
        rig.graph.refuse = lambda _n, body: pair_rate if body["text"]["body"] == "a-0" else None
        await rig.queue([row("a:0", "a", "a-0")])
        await rig.queue([row("b:0", "b", "b-0")])
        assert rig.delivery.paused() == []  # the number was never paused
        assert (await rig.message("b:0")).status == "accepted"
        await rig.run(500)
        tries = [r["received"] for r in rig.graph.requests if r["body"]["text"]["body"] == "a-0"]
        assert [round(b - a) for a, b in itertools.pairwise(tries)] == [1, 4, 16, 64, 256]
        assert (await rig.message("a:0")).status == "pending"
        await rig.queue([row("a:1", "a", "a-1")])  # made later: younger than the limit
        await rig.run(200)  # the next try would be at 641 s: past the limit
        given_up = await rig.message("a:0")
        assert given_up.status == "failed"
        assert given_up.error_title == (
            "gave up: not accepted within 10m (last error: (131056) Pair rate limit hit)"
        )
        assert (await rig.message("a:1")).status == "accepted"


async def test_sends_under_way_when_the_number_pauses_are_held_not_failed(rig: Rig) -> None:
    """Eight sends in flight all fail at once: each contact waits, none is charged."""
    rig.graph.failing = (503, {"error": {"code": 131016, "message": "Service unavailable"}})
    await rig.queue([row(f"{c}:0", c, f"{c}-0") for c in CONTACTS])
    assert len(rig.graph.requests) == 8  # the pool's size
    assert rig.delivery.paused()[0].waiting == 10
    rig.graph.failing = None
    await rig.until_empty()
    assert await rig.statuses() == {"accepted"}


async def test_one_message_the_provider_always_fails_pauses_its_number_once(rig: Rig) -> None:
    """A message answered with a 500 every time, while the number's other messages go out: the
    first failure pauses the number (it looks like an outage), a probe with another contact
    resumes it, and from then on only that message's contact waits (as long as between probes)."""
    poisoned = meta_error(1, "An unknown error occurred", 500)
    rig.graph.refuse = lambda _n, body: poisoned if body["text"]["body"] == "a-0" else None
    await rig.queue([row("a:0", "a", "a-0")])
    await rig.queue([row(f"{c}:0", c, f"{c}-0") for c in "bcd"])
    await rig.run(120)
    await rig.queue([row(f"{c}:1", c, f"{c}-1") for c in "bcd"])
    for contact in "bcd":
        assert texts_to(rig.graph, contact) == [f"{contact}-0", f"{contact}-1"]
    assert rig.metrics.pauses.get("outage") == 1
    assert rig.delivery.paused() == []
    tries = [r["received"] for r in rig.graph.requests if r["body"]["text"]["body"] == "a-0"]
    assert [round(b - a) for a, b in itertools.pairwise(tries)][:6] == [1, 2, 4, 8, 16, 30]
    assert (await rig.message("a:0")).status == "pending"


async def test_a_retry_after_of_zero_is_not_a_storm_of_probes(rig: Rig) -> None:
    """Retry-After: 0 (or 0.01) is honoured no faster than one probe a second."""
    for wait in ("0", "0.01"):
        rig.graph.requests.clear()
        rig.graph.failing = (*meta_error(130429, "Rate limit hit", 429), {"Retry-After": wait})
        await rig.queue([row(f"a:{wait}", "a", f"a-{wait}")])
        await rig.run(10, step=0.25)
        assert len(rig.graph.requests) <= 12, len(rig.graph.requests)
        rig.graph.failing = None
        await rig.until_empty()


async def test_a_probe_that_fails_here_does_not_resume_the_number(rig: Rig) -> None:
    """A probe whose message cannot even be built (no recipient) says nothing about the
    provider: that message is recorded as failed, the number stays paused, another probes."""
    rig.graph.failing = meta_error(2, "Temporary downtime", 503)
    await rig.queue([row("a:0", "a", "a-0"), row("b:0", "b", "b-0")])
    await rig.queue([row("c:0", "c", "c-0", phone=None, user_id=None)])
    await rig.run(20)  # probes: a at 1 s, b at 3 s, c at 7 s, a again...
    failed = await rig.message("c:0")
    assert failed.status == "failed" and "neither a phone number" in (failed.error_title or "")
    assert rig.delivery.paused() and rig.metrics.probes.get("ok") == 0
    rig.graph.failing = None
    await rig.until_empty()
    assert {(await rig.message(i)).status for i in ("a:0", "b:0")} == {"accepted"}


async def test_an_answer_the_store_cannot_hold_still_settles_the_message(
    graph: tuple[FakeGraph, str], tmp_path: Path
) -> None:
    """A provider id SQLite cannot store (half an emoji) must not leave the message pending, to
    go out again after a restart behind the contact's later replies."""
    from adapters.stores.sqlite import SqliteStore

    class Odd:
        async def send(self, out: Outgoing) -> str:
            return "wamid.\ud83d" if out.id == "a:0" else f"wamid.{out.id}"

    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    metrics = Metrics()
    committer = Committer(store, metrics)
    committer.start()
    delivery = Delivery(Odd(), committer, metrics, clock=FakeClock(), concurrency=1)
    delivery.start()
    rows = [row("a:0", "a", "a-0"), row("a:1", "a", "a-1")]
    await store.write([Commit(ConversationRow("a", NUMBER, "f", "s", False, 1.0, {"v": 1}), rows)])
    delivery.enqueue(rows)
    await delivery.wait_empty()
    await delivery.stop(1.0)
    await committer.close()
    assert await store.outbox() == []
    statuses = [(m.id, m.status) for m in await store.transcript("a", 10)]
    assert statuses == [("a:0", "accepted"), ("a:1", "accepted")]
    await store.close()


def test_a_token_file_with_a_line_break_is_refused_and_the_old_token_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from engine.errors import ConfigError

    token = tmp_path / "token"
    token.write_text("new-\ntoken\n")
    with pytest.raises(ConfigError, match="line breaks"):
        AccessToken(path=token)
    token.write_text("good-token\n")
    access = AccessToken(path=token)
    token.write_text("half\ntoken")
    access.refused()
    assert access.header() == "Bearer good-token"
    assert any("line breaks" in r.getMessage() for r in caplog.records)
    token.write_text("renewed")
    access.refused()
    assert access.header() == "Bearer renewed"


async def test_permanent_errors_are_recorded_and_the_next_message_goes_out(rig: Rig) -> None:
    for code in (131047, 131026, 100, 131051):
        rig.graph.answer_next(meta_error(code, "no can do"))
        first, second = f"a:{code}:1", f"a:{code}:2"
        await rig.queue([row(first, "a", "a-first"), row(second, "a", "a-second")])
        await rig.until_empty()
        failed, sent = await rig.message(first), await rig.message(second)
        assert (failed.status, failed.error_code) == ("failed", code)
        window = "outside the 24-hour window " if code == 131047 else ""
        assert failed.error_title == f"{window}({code}) no can do"
        assert sent.status == "accepted"
        assert rig.metrics.outbound.get("failed", str(code)) == 1
    assert rig.delivery.paused() == []


async def test_an_unreachable_provider_is_an_outage_of_the_number(
    graph: tuple[FakeGraph, str],
) -> None:
    """A connection refused pauses the number; nothing was sent, so nothing may show twice."""
    async with aiohttp.ClientSession() as session:
        sender = CloudApiSender(
            session, "http://127.0.0.1:9/v25.0", AccessToken(Secret("tok")), timeout=1
        )
        with pytest.raises(ChannelDown) as caught:
            await sender.send(Outgoing("x", "a", "n", "1", None, TextMessage("hi")))
    assert caught.value.cause == "outage" and not caught.value.maybe_sent


def test_a_token_file_that_cannot_be_read_is_a_start_error(tmp_path: Path) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="WHATSAPP_ACCESS_TOKEN_FILE: cannot read"):
        AccessToken(path=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        AccessToken(path=tmp_path / "empty")


# --- pure parts ------------------------------------------------------------------------------


def test_request_bodies() -> None:
    """Phones go out in E.164 with '+'; a user id without phone uses recipient."""
    buttons = ButtonsMessage(
        "Pick", (Button("y", "Yes"), Button("n", "No")), header="Hi", footer="Bye"
    )
    body = graph_body(Outgoing("r:w:0", "c", "n", "15550001", "US.1", buttons))
    assert body["to"] == "+15550001" and "recipient" not in body
    assert body["biz_opaque_callback_data"] == "r:w:0"
    assert body["interactive"] == {
        "type": "button",
        "body": {"text": "Pick"},
        "header": {"type": "text", "text": "Hi"},
        "footer": {"text": "Bye"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "y", "title": "Yes"}},
                {"type": "reply", "reply": {"id": "n", "title": "No"}},
            ]
        },
    }
    listing = ListMessage("Choose", "Sizes", (Section(None, (Row("s", "Small", "for one"),)),))
    body = graph_body(Outgoing("x", "c", "n", None, "US.1", listing))
    assert body["recipient"] == "US.1" and "to" not in body
    assert body["interactive"]["action"] == {
        "button": "Sizes",
        "sections": [{"rows": [{"id": "s", "title": "Small", "description": "for one"}]}],
    }
    text = graph_body(Outgoing("x", "c", "n", "1", None, TextMessage("see https://x.y")))
    assert text["type"] == "text" and text["text"] == {
        "body": "see https://x.y",
        "preview_url": True,
    }
    with pytest.raises(PermanentDelivery):
        graph_body(Outgoing("x", "c", "n", None, None, TextMessage("nobody")))


# (HTTP status, body, Retry-After) -> the provider's message id, or what has to wait:
# "outage" / "throttled" / "auth" (the number), "contact" (this recipient), "message" (failed).
OUTCOMES: list[tuple[int, Any, str | None, str]] = [
    (200, {"messages": [{"id": "wamid.OK"}]}, None, "wamid.OK"),
    (200, {"messages": []}, None, "outage"),  # not the Graph API talking: a wrong URL, a proxy
    (200, "<html>Welcome to the hotel wifi</html>", None, "outage"),
    (400, meta_error(130429)[1], None, "throttled"),
    (429, meta_error(130429)[1], "7", "throttled"),
    (400, meta_error(4)[1], None, "throttled"),
    (400, meta_error(80007)[1], None, "throttled"),
    (429, {}, None, "throttled"),
    (400, meta_error(131056)[1], None, "contact"),
    (503, meta_error(2)[1], None, "outage"),
    (500, meta_error(1)[1], None, "outage"),
    (500, meta_error(131000)[1], None, "contact"),  # tried again a few times, then failed
    (503, meta_error(131016)[1], None, "outage"),
    (400, meta_error(131057)[1], None, "outage"),
    (502, None, None, "outage"),
    (504, "gateway timeout", None, "outage"),
    (408, None, None, "outage"),
    (401, meta_error(190)[1], None, "auth"),
    (400, meta_error(0)[1], None, "auth"),
    (403, meta_error(10)[1], None, "auth"),
    (403, meta_error(200)[1], None, "auth"),
    (400, meta_error(368)[1], None, "auth"),
    (400, meta_error(131042)[1], None, "auth"),
    (401, None, None, "auth"),
    (400, meta_error(131047)[1], None, "message"),
    (400, meta_error(131026)[1], None, "message"),
    (400, meta_error(131051)[1], None, "message"),
    (500, meta_error(100)[1], None, "message"),  # the code decides, not the HTTP status
    (503, meta_error(999999)[1], None, "outage"),  # an unknown code: the status decides
    (502, meta_error(133004)[1], None, "outage"),
    (400, meta_error(999999)[1], None, "message"),
    (400, meta_error(131005)[1], None, "auth"),
    (400, meta_error(33)[1], None, "auth"),
    (400, meta_error(17)[1], None, "throttled"),
    (400, meta_error(613)[1], None, "throttled"),
    (200, {"messages": [{"id": "wamid.\ud83d"}]}, None, "outage"),  # not a Graph API id
    (200, {"messages": [{"id": ""}]}, None, "outage"),
    (400, meta_error(131008)[1], None, "message"),
    (404, "not json", None, "outage"),  # no Graph API error: nothing about the message
    (400, {"oops": 1}, None, "outage"),
    (403, "<html>Forbidden</html>", None, "auth"),
    (400, {"error": {"code": "9" * 5000}}, None, "message"),
]


@pytest.mark.parametrize(("status", "data", "retry_after", "expected"), OUTCOMES)
def test_answers_are_classified_by_what_has_to_wait(
    status: int, data: Any, retry_after: str | None, expected: str
) -> None:
    if expected.startswith("wamid"):
        assert outcome(status, data, retry_after) == expected
        return
    with pytest.raises((ChannelDown, RetryableDelivery, PermanentDelivery)) as caught:
        outcome(status, data, retry_after)
    error = caught.value
    if isinstance(error, ChannelDown):
        assert error.cause == expected
    elif isinstance(error, RetryableDelivery):
        assert expected == "contact"
    else:
        assert expected == "message"
    if retry_after is not None:
        assert isinstance(error, RetryableDelivery)
        assert error.retry_after == float(retry_after)


REMINDER = TemplateMessage("cart_reminder", "en_US", "Hi Ana", params=("Ana",))


async def test_131047_sends_the_template_fallback_in_place_of_the_message(rig: Rig) -> None:
    """The provider says the window has closed: the same outbox row goes as its template, at
    once, and the transcript shows the template; without a fallback it is recorded as not sent
    outside the window."""
    rig.graph.answer_next(meta_error(131047, "Re-engagement message"))
    await rig.queue([row("a:0", "a", "a-0", fallback=REMINDER), row("a:1", "a", "a-1")])
    await rig.until_empty()
    kinds = [(r["body"]["type"], r["status"]) for r in rig.graph.requests]
    assert kinds == [("text", 400), ("template", 200), ("text", 200)]
    assert rig.graph.requests[1]["body"]["template"]["name"] == "cart_reminder"
    assert rig.graph.requests[1]["body"]["biz_opaque_callback_data"] == "a:0"
    first = await rig.message("a:0")
    assert (first.status, first.type, first.text) == ("accepted", "template", "Hi Ana")
    rig.graph.answer_next(meta_error(131047, "Re-engagement message"))
    await rig.queue([row("b:0", "b", "b-0")])
    await rig.until_empty()
    failed = await rig.message("b:0")
    assert (failed.status, failed.error_code) == ("failed", 131047)
    assert failed.error_title.startswith("outside the 24-hour window")
    assert rig.metrics.not_sent.get("window") == 1
    assert rig.metrics.templates.get("window") == 1


async def test_a_message_that_waited_past_the_window_is_not_sent_free_form(rig: Rig) -> None:
    """The number was paused for hours and the customer's window closed meanwhile: the
    provider is not asked to send what it would refuse; the template goes, or nothing."""
    rig.graph.failing = meta_error(2, "Temporary downtime", 503)
    until = rig.clock.now() + 600
    await rig.queue(
        [
            row("a:0", "a", "a-0", fallback=REMINDER, until=until),
            row("b:0", "b", "b-0", until=until),
        ]
    )
    await rig.run(900)
    rig.graph.failing = None
    rig.graph.requests.clear()
    await rig.until_empty()
    assert [r["body"]["type"] for r in rig.graph.requests] == ["template"]
    assert (await rig.message("a:0")).type == "template"
    unsent = await rig.message("b:0")
    assert (unsent.status, unsent.error_title) == ("failed", "outside the 24-hour window")


async def test_131000_is_tried_three_times_then_recorded_and_the_number_keeps_sending(
    rig: Rig,
) -> None:
    rig.graph.refuse = lambda _n, body: (
        meta_error(131000, "Something went wrong", 500) if body["text"]["body"] == "a-0" else None
    )
    await rig.queue([row("a:0", "a", "a-0"), row("a:1", "a", "a-1"), row("b:0", "b", "b-0")])
    await rig.until_empty()
    tries = [r for r in rig.graph.requests if r["body"]["text"]["body"] == "a-0"]
    assert len(tries) == 3
    assert [round(b["received"] - a["received"]) for a, b in itertools.pairwise(tries)] == [1, 4]
    failed = await rig.message("a:0")
    assert (failed.status, failed.error_code) == ("failed", 131000)
    assert texts_to(rig.graph, "a") == ["a-1"] and texts_to(rig.graph, "b") == ["b-0"]
    assert rig.metrics.pauses.get("outage") == 0


@pytest.mark.parametrize(("code", "seconds"), [(131050, None), (131049, 86400.0)])
async def test_a_customer_who_stopped_marketing_is_reported_for_their_conversation(
    graph: tuple[FakeGraph, str], code: int, seconds: float | None
) -> None:
    told: list[tuple[str, float | None, bool]] = []
    tell = lambda contact, s, every: told.append((contact, s, every))  # noqa: E731
    async with make_rig(graph, AccessToken(Secret("tok")), on_opt_out=tell) as rig:
        rig.graph.answer_next(meta_error(code, "User stopped marketing messages"))
        await rig.queue([row("a:0", "a", "a-0")])
        await rig.until_empty()
        assert told == [("a", seconds, False)]  # marketing only: replies still go
        assert (await rig.message("a:0")).error_code == code


async def test_a_malformed_message_is_logged_with_the_flow_and_step_that_made_it(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    for code in (100, 131008, 131009):
        rig.graph.answer_next(meta_error(code, "Invalid parameter"))
        await rig.queue([row(f"a:{code}", "a", "a-x", flow="shop", state="checkout")])
        await rig.until_empty()
    lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 3
    assert all("flow shop, step 'checkout'" in line for line in lines)


async def test_a_send_is_recorded_as_in_flight_before_it_leaves(rig: Rig) -> None:
    """The provider is down: the send left (and failed), and the row says a send left."""
    rig.graph.failing = meta_error(2, "Temporary downtime", 503)
    await rig.queue([row("a:0", "a", "a-0")])
    (left,) = await rig.store.outbox()
    assert left.sending_at == rig.graph.requests[0]["received"]


async def test_sends_a_crash_left_in_flight_wait_for_a_status_then_go_again_in_order(
    graph: tuple[FakeGraph, str],
) -> None:
    """After a restart, a row whose send left but whose outcome was never recorded waits (and
    its contact's later messages with it) until a status webhook names it, recorded as
    accepted without a second send, or until the reconcile period is over, then goes again;
    rows never tried go out at once."""
    async with make_rig(graph, AccessToken(Secret("tok"))) as rig:
        doubtful = [
            dataclasses.replace(row("a:0", "a", "a-0"), sending_at=1.0),
            row("a:1", "a", "a-1"),
            dataclasses.replace(row("b:0", "b", "b-0"), sending_at=1.0),
            row("b:1", "b", "b-1"),
            row("c:0", "c", "c-0"),
        ]
        await rig.queue(doubtful)
        assert texts_to(rig.graph, "c") == ["c-0"]
        assert texts_to(rig.graph, "a") == [] and texts_to(rig.graph, "b") == []
        rig.delivery.open()
        await rig.run(5)
        assert rig.delivery.claim("a:0", "wamid.before-the-crash")
        assert not rig.delivery.claim("zz:0", "wamid.other")  # not a send in doubt
        await rig.settle()
        assert texts_to(rig.graph, "a") == ["a-1"]  # a-0 is not sent again
        claimed = await rig.message("a:0")
        assert (claimed.status, claimed.provider_id) == ("accepted", "wamid.before-the-crash")
        assert texts_to(rig.graph, "b") == []
        await rig.run(5)
        assert texts_to(rig.graph, "b") == ["b-0", "b-1"]
        assert not rig.delivery.claim("b:0", "wamid.late")  # sent again already
        assert rig.metrics.reconciled.get("claimed") == 1
        assert rig.metrics.reconciled.get("resent") == 1
        assert await rig.statuses() == {"accepted"}


class Batches(MemoryStore):
    """A store that records the operations of each transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Any]] = []

    async def write(self, ops: Any) -> Any:
        self.batches.append(list(ops))
        await asyncio.sleep(0)  # a real store awaits its I/O: writes queue up meanwhile
        return await super().write(ops)


async def test_the_outcome_of_a_send_is_written_ahead_of_a_large_batch() -> None:
    """Delivery's writes are urgent: they go into the next transaction, ahead of a backlog."""
    store = Batches()
    committer = Committer(store, Metrics(), max_ops=10)
    committer.start()
    row = ConversationRow("k", NUMBER, "f", "s", False, 1.0, {"v": 1})
    slow = [asyncio.ensure_future(committer.submit(Commit(row))) for _ in range(50)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first batch is being written
    await committer.submit(Sending("x", 1.0), urgent=True)
    await asyncio.gather(*slow)
    await committer.close()
    where = next(i for i, b in enumerate(store.batches) if any(isinstance(op, Sending) for op in b))
    assert len(store.batches) == 6 and where == 1, [len(b) for b in store.batches]
    assert isinstance(store.batches[1][0], Sending)


async def test_the_engine_claims_a_send_in_doubt_from_a_status_webhook_and_resends_the_rest(
    tmp_path: Path,
) -> None:
    """Settings to engine: SEND_RECONCILE is the period; a status webhook (through the engine's
    intake, durably accepted) that echoes an id in doubt records it as accepted."""
    from engine.engine import Engine, EngineConfig
    from engine.events import StatusUpdate
    from engine.flows import load_flows
    from engine.settings import Settings
    from tests.support import ROOT, Recorder

    settings = Settings.from_env({"SEND_RECONCILE": "3s"})
    store = MemoryStore()
    convo = ConversationRow("n:1", NUMBER, "support", None, False, 1.0, {"v": 2, "number": NUMBER})
    await store.write([Commit(convo, [row("r:w1:0", "n:1", "one"), row("r:w2:0", "n:2", "two")])])
    await store.write([Sending("r:w1:0", 5.0), Sending("r:w2:0", 5.0)])
    clock, sender = FakeClock(), Recorder()
    engine = Engine(
        store=store,
        sender=sender,
        flows=load_flows(ROOT / "flows", "support"),
        clock=clock,
        config=EngineConfig(send_reconcile=settings.send_reconcile),
    )
    await engine.start()
    try:
        await engine.ingest(
            [StatusUpdate("wamid.one", "delivered", 10, NUMBER, callback_data="r:w1:0")]
        )
        await clock.advance(2.9)
        await engine.delivery.wait_quiet()
        assert sender.sent == []
        await clock.advance(0.2)
        await engine.delivery.wait_empty()
        assert [o.id for o in sender.sent] == ["r:w2:0"]
        one, two = (await store.transcript("n:1", 5))[0], (await store.transcript("n:2", 5))[0]
        assert (one.status, one.provider_id) == ("delivered", "wamid.one")
        assert (two.status, two.provider_id) == ("accepted", "wamid.r:w2:0")
    finally:
        await engine.close()


@pytest.mark.parametrize(
    ("rate", "calls", "waits"),
    [
        (2.0, [0.0, 0.0, 0.25, 0.5], [0.0, 0.5, 0.25, 0.0]),  # one every 1/rate
        (80.0, [0.0, 0.0, 0.0125], [0.0, 0.0125, 0.0]),
        (1.0, [0.0, 10.0, 10.0, 10.5], [0.0, 0.0, 1.0, 0.5]),  # a long pause saves up 1 token
        (1000.0, [5.0, 5.0, 5.0], [0.0, 0.001, 0.001]),  # never less than a millisecond
    ],
)
def test_the_bucket_gives_a_token_or_the_time_to_wait(
    rate: float, calls: list[float], waits: list[float]
) -> None:
    from engine.ratelimit import Bucket

    bucket = Bucket(rate, burst=1.0)
    assert [round(bucket.take(t), 6) for t in calls] == waits


async def test_a_number_never_sends_faster_than_send_rate_and_no_contact_is_reordered(
    graph: tuple[FakeGraph, str],
) -> None:
    """400 replies for 10 contacts at once, on a number limited to 80 a second: they take 5
    simulated seconds (less the first burst of 8), no second holds more than 80 + 8, and each
    contact's replies arrive in order."""
    async with make_rig(graph, AccessToken(Secret("tok")), concurrency=32, rate=80) as rig:
        await rig.queue([row(f"{c}:{i}", c, f"{c}-{i}") for i in range(40) for c in CONTACTS])
        took = await rig.until_empty(limit=10, step=0.05)
    fake, metrics = rig.graph, rig.metrics
    assert 4.8 <= took <= 5.0, took
    times = sorted(r["received"] for r in fake.requests)
    assert max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)) <= 88
    for c in CONTACTS:
        assert texts_to(fake, c) == [f"{c}-{i}" for i in range(40)]
    assert metrics.rate_waits.get() > 0
