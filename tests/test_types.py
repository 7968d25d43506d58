"""Typed answers: the reading of what people type (a table), and type: branches in a flow."""

from __future__ import annotations

import textwrap
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.engine import Engine
from engine.errors import ConfigError
from engine.events import ButtonReply, Content, Customer, Message, Text
from engine.flows import load_flows, validate_path
from engine.flows.types import Bounds, read
from engine.memstore import MemoryStore
from engine.settings import Settings
from tests.conftest import AppFactory
from tests.fakes.graph import FakeGraph
from tests.support import Recorder, body, change, eventually, signed, text

KOLKATA = ZoneInfo("Asia/Kolkata")
# Sunday 6 December 2026, 15:00 in Kolkata: when the customer wrote.
AT = datetime(2026, 12, 6, 15, 0, tzinfo=KOLKATA).timestamp()
D = Decimal
NO = None

CASES: list[tuple[str, str, Bounds, Any]] = [
    # integer: what people type for "how many?"
    ("integer", "5", Bounds(), D(5)),
    ("integer", "5.", Bounds(), D(5)),
    ("integer", "3 cakes", Bounds(), D(3)),
    ("integer", "twelve", Bounds(), D(12)),
    ("integer", "a dozen", Bounds(), D(12)),
    ("integer", "two dozen", Bounds(), D(24)),
    ("integer", "twenty five", Bounds(), D(25)),
    ("integer", "1,200", Bounds(), D(1200)),
    ("integer", "-2", Bounds(), D(-2)),
    ("integer", "5.0", Bounds(), D(5)),
    ("integer", "2.5", Bounds(), NO),  # not whole
    ("integer", "3 or 4", Bounds(), NO),  # which one?
    ("integer", "some", Bounds(), NO),
    ("integer", "", Bounds(), NO),
    ("integer", "21", Bounds(D(1), D(20)), NO),
    ("integer", "0", Bounds(D(1), D(20)), NO),
    ("integer", "20", Bounds(D(1), D(20)), D(20)),
    ("integer", "abc5", Bounds(), NO),  # a number inside a word is not a quantity
    ("integer", "two thousand", Bounds(), D(2000)),
    ("integer", "two thousand five hundred", Bounds(), D(2500)),
    ("integer", "two and a half", Bounds(), NO),
    ("integer", "1.000", Bounds(), NO),  # one, or a thousand?
    ("integer", "2.000.000", Bounds(), NO),
    ("integer", "-0", Bounds(), D(0)),
    # number
    ("number", "2.5", Bounds(), D("2.5")),
    ("number", "2.50 kg", Bounds(), D("2.50")),
    ("number", ".5", Bounds(), D("0.5")),
    ("number", "1,234.75", Bounds(), D("1234.75")),
    ("number", "ten", Bounds(), D(10)),
    ("number", "0.3", Bounds(D("0.5")), NO),
    ("number", "1e400", Bounds(), NO),
    ("number", "1e-999999", Bounds(), NO),
    # yes/no
    ("yesno", "yes", Bounds(), True),
    ("yesno", "Yeah!", Bounds(), True),
    ("yesno", "ok", Bounds(), True),
    ("yesno", "👍", Bounds(), True),
    ("yesno", "no thanks", Bounds(), False),
    ("yesno", "Nope", Bounds(), False),
    ("yesno", "yes no", Bounds(), NO),
    ("yesno", "maybe", Bounds(), NO),
    # email
    ("email", "Ana.Lima+shop@Example.COM", Bounds(), "Ana.Lima+shop@example.com"),
    ("email", "<ana@example.org>.", Bounds(), "ana@example.org"),
    ("email", "ana@example", Bounds(), NO),
    ("email", "my email is ana@example.org", Bounds(), NO),
    ("email", "a@b@c.com", Bounds(), NO),
    # phone
    ("phone", "+91 98765 43210", Bounds(), "+919876543210"),
    ("phone", "(555) 123-4567", Bounds(), "5551234567"),
    ("phone", "12345", Bounds(), NO),
    ("phone", "+1234567890123456", Bounds(), NO),  # 16 digits: longer than E.164
    ("phone", "call me", Bounds(), NO),
    # text with a length bound
    ("text", "Ana", Bounds(D(2), D(40)), "Ana"),
    ("text", "A", Bounds(D(2), D(40)), NO),
    ("text", "x" * 41, Bounds(D(2), D(40)), NO),
    # dates and times, relative to Sunday 6 December 2026 15:00 in Kolkata: the next such moment
    ("date", "tomorrow", Bounds(), "2026-12-07"),
    ("date", "today", Bounds(), "2026-12-06"),
    ("date", "friday", Bounds(), "2026-12-11"),
    ("date", "24/12", Bounds(), "2026-12-24"),
    ("date", "2027-01-15", Bounds(), "2027-01-15"),
    ("date", "banana", Bounds(), NO),
    ("date", "!!!", Bounds(), NO),
    ("time", "5pm", Bounds(), "17:00"),
    ("time", "17:30", Bounds(), "17:30"),
    ("time", "5", Bounds(), NO),  # five what?
    ("date", "12/24", Bounds(), NO),  # not 12 December 2124
    ("date", "32/01", Bounds(), NO),
    ("datetime", "tomorrow 25pm", Bounds(), NO),
    ("datetime", "tomorrow 5pm", Bounds(), "2026-12-07T17:00+05:30"),
    ("datetime", "5pm", Bounds(), "2026-12-06T17:00+05:30"),  # later today
    ("datetime", "10am", Bounds(), "2026-12-07T10:00+05:30"),  # already past today
    ("datetime", "Dec 24 at 3:30pm", Bounds(), "2026-12-24T15:30+05:30"),
]


@pytest.mark.parametrize(("kind", "text", "bounds", "expected"), CASES)
def test_reading_what_people_type(kind: str, text: str, bounds: Bounds, expected: Any) -> None:
    value, ok = read(kind, text, bounds, at=AT, zone=KOLKATA)
    assert (value, ok) == (expected, expected is not None)


def test_the_table_is_large_and_every_type_is_in_it() -> None:
    from engine.flows.types import TYPES

    assert len(CASES) >= 50
    assert {c[0] for c in CASES} == set(TYPES)


def test_a_yes_button_is_yes() -> None:
    assert read("yesno", "Sure thing", choice="yes") == (True, True)
    assert read("yesno", "", choice="no") == (False, True)


def test_an_answer_longer_than_200_characters_is_not_read_as_a_type() -> None:
    assert read("date", "tomorrow " * 10_000, at=AT, zone=KOLKATA) == (None, False)
    assert read("integer", "1" * 100_000) == (None, False)  # not cut to 200 digits and taken
    assert read("text", "x" * 1000) == ("x" * 1000, True)  # text has its own bounds


# --- in a flow -------------------------------------------------------------------------------

FLOW = """
start: qty
states:
  qty:
    say: How many cakes?
    on:
      - type: integer
        min: 1
        max: 20
        save: qty
        go: when
  when:
    say: "{qty} cakes. When shall we deliver?"
    on:
      - type: datetime
        save: at
        go: confirm
    otherwise:
      - "Try a day and time, like tomorrow 5pm."
  confirm:
    say:
      text: "{= qty * 2} slices of cake... I mean {qty} cakes at {at}. Right?"
      buttons: [Yes, No]
    on:
      - type: yesno
        save: answer
        go: [{when: answer, to: done}, {to: qty}]
  done:
    say: Booked.
    end: true
"""


class Bakery:
    def __init__(self, engine: Engine, sender: Recorder) -> None:
        self.engine, self.sender, self.n = engine, sender, 0

    async def say(self, content: Content | str) -> list[str]:
        before = len(self.sender.texts("n:1"))
        self.n += 1
        body = Text(content) if isinstance(content, str) else content
        m = Message(f"w{self.n}", int(AT), Customer("n", phone="1", name="Ana"), body)
        await self.engine.ingest([m])
        await self.engine.actors.wait_idle()
        await self.engine.delivery.wait_empty()
        return self.sender.texts("n:1")[before:]


@pytest.fixture
async def bakery(tmp_path: Path) -> Any:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "bakery.yaml").write_text(textwrap.dedent(FLOW).lstrip("\n"))
    sender = Recorder()
    engine = Engine(
        store=MemoryStore(), sender=sender, flows=load_flows(folder, "bakery", zone=KOLKATA)
    )
    await engine.start()
    yield Bakery(engine, sender)
    await engine.close()


async def test_typed_answers_fill_slots_with_values_and_say_what_they_need(bakery: Bakery) -> None:
    assert await bakery.say("hi") == ["How many cakes?"]
    assert await bakery.say("lots") == ["Please send a whole number from 1 to 20."]
    assert await bakery.say("30") == ["Please send a whole number from 1 to 20."]
    assert await bakery.say("3 cakes please") == ["3 cakes. When shall we deliver?"]
    assert await bakery.say("whenever") == ["Try a day and time, like tomorrow 5pm."]
    assert await bakery.say("tomorrow 5pm") == [
        "6 slices of cake... I mean 3 cakes at 2026-12-07T17:00+05:30. Right?"
    ]
    view = await bakery.engine.view("n:1", limit=0)
    assert view["slots"]["qty"] == "3"  # a number: arithmetic worked on it above
    assert await bakery.say(ButtonReply("no", "No")) == ["How many cakes?"]
    assert await bakery.say("2") == ["2 cakes. When shall we deliver?"]
    await bakery.say("friday 10am")
    assert await bakery.say("yep") == ["Booked."]
    view = await bakery.engine.view("n:1", limit=0)
    assert view["slots"]["at"] == "2026-12-11T10:00+05:30"
    assert view["slots"]["answer"] is True


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        (
            "type: integer",
            "type: integr",
            6,
            "type: 'integr' is not a type (did you mean 'integer'?)",
        ),
        ("max: 20", "max: lots", 8, "max: a number, like 1 or 2.5"),
        ("max: 20", "max: 0", 8, "max: 0 is below min: 1"),
        ("max: 20", "max: 1e999999", 8, "max: '1e999999' is too large a bound"),
        ("min: 1", "min: 1.5", 7, "min: an integer's bound is a whole number (not 1.5)"),
        (
            "      - type: datetime",
            "      - type: datetime\n        min: 3",
            15,
            "min: belongs to a branch with type: integer, number or text",
        ),
    ],
)
def test_mistakes_in_typed_branches_are_reported_at_their_line(
    tmp_path: Path, old: str, new: str, line: int, message: str
) -> None:
    path = tmp_path / "bakery.yaml"
    path.write_text(textwrap.dedent(FLOW).lstrip("\n").replace(old, new))
    found = [(p.line, p.message) for p in validate_path(path)]
    assert any(at == line and text.startswith(message) for at, text in found), found


def test_timezone_is_checked_and_reaches_the_flows() -> None:
    assert Settings.from_env({}).timezone == "UTC"
    assert Settings.from_env({"TIMEZONE": "Asia/Kolkata"}).timezone == "Asia/Kolkata"
    for bad in ("Mars/Base", "../etc/passwd", "Asia"):
        with pytest.raises(ConfigError, match="TIMEZONE"):
            Settings.from_env({"TIMEZONE": bad})


async def test_the_server_reads_dates_in_its_timezone(
    tmp_path: Path, start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "when.yaml").write_text(
        textwrap.dedent(
            """
            start: ask
            states:
              ask:
                say: When?
                on:
                  - type: datetime
                    save: at
                    go: said
              said:
                say: "At {at}."
                end: true
            """
        ).lstrip("\n")
    )
    client = await start_app(
        {**env, "FLOWS_DIR": str(folder), "ENTRY_FLOW": "when", "TIMEZONE": "Asia/Kolkata"}
    )
    for n, words in enumerate(("hi", "tomorrow 5pm"), start=1):
        raw, headers = signed(body(change([text("15550001", f"wamid.T{n}", words, ts=int(AT))])))
        assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
        await eventually(lambda n=n: len(graph[0].requests) >= n)
    said = [r["body"]["text"]["body"] for r in graph[0].requests]
    assert said == ["When?", "At 2026-12-07T17:00+05:30."]
