"""`python -m engine chat` talks to the real engine in a terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def chat(lines: list[str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "engine", "chat", *args],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_scripted_conversation() -> None:
    """Greeting, a numbered button, an FAQ answer, a handoff with an agent, release."""
    out = chat(
        [
            "hello",
            "1",
            "do you deliver on saturday?",
            "/state",
            "3",
            "are you there?",
            "/agent Hi, this is Maria.",
            "/release",
            "hi",
            "/quit",
        ],
        "--contact",
        "15550001111",
        "--name",
        "Bea",
    )
    assert "bot > Hi Bea! Welcome to Acme Supplies." in out
    assert "1) Ask a question" in out
    assert "bot > Sure, what would you like to know?" in out
    assert "bot > We deliver within 50 km of the depot" in out
    assert "flow=support state=more handoff=False" in out
    assert "bot > I'm passing you to a member of our team." in out
    assert "(the bot stays silent: a person holds this conversation;" in out
    assert "bot > Hi, this is Maria." in out
    assert out.count("Welcome to Acme Supplies") == 2  # the flow starts again after release


def test_chat_refuses_a_folder_without_the_flow() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine", "chat", "--flows-dir", str(ROOT / "tests")],
        input="/quit\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip() == f"{ROOT / 'tests'}:0: ENTRY_FLOW 'support': no support.yaml here"
    )


def test_a_number_at_a_question_without_buttons_is_just_a_number(tmp_path: Path) -> None:
    """Options shown earlier are forgotten once a turn offers none: typing 2 at a quantity
    question answers 2, not the second button of the greeting."""
    (tmp_path / "cakes.yaml").write_text(
        "start: menu\n"
        "states:\n"
        "  menu:\n"
        "    say: {text: Hi!, buttons: [Cakes, Pies]}\n"
        "    on:\n"
        "      - choice: cakes\n"
        "        go: qty\n"
        "      - choice: pies\n"
        "        say: No pies today.\n"
        "  qty:\n"
        "    say: How many?\n"
        "    on:\n"
        "      - type: integer\n"
        "        save: n\n"
        "        go: done\n"
        "  done:\n"
        "    say: '{n} cakes.'\n"
        "    end: true\n"
    )
    out = chat(["hi", "1", "2", "/quit"], "--flows-dir", str(tmp_path), "--flow", "cakes")
    assert "How many?" in out
    assert "2 cakes." in out
    assert "No pies today." not in out


def test_wait_skips_time_so_a_reminder_can_be_tried() -> None:
    """/wait 11m in the support flow's question step: its reminder arrives, once."""
    out = chat(["hi", "1", "/wait 5m", "/wait 6m", "/wait 1d", "/wait soon", "/quit"])
    assert "5m later: nothing was due" in out
    assert out.count("Still there? Type your question whenever you're ready") == 1
    assert "1d later: nothing was due" in out
    assert "/wait DURATION, like 90s, 30m, 2h or 1d" in out


def test_tap_and_location_send_what_whatsapp_would(tmp_path: Path) -> None:
    (tmp_path / "where.yaml").write_text(
        "start: menu\n"
        "states:\n"
        "  menu:\n"
        "    say: {text: Hi!, buttons: [Delivery, Pickup]}\n"
        "    on:\n"
        "      - choice: delivery\n"
        "        go: where\n"
        "  where:\n"
        "    say: Send your location.\n"
        "    on:\n"
        "      - kind: location\n"
        "        save: place\n"
        "        go: done\n"
        "  done:\n"
        "    say: '{= place.name} at {= place.latitude}, {= place.longitude}.'\n"
        "    end: true\n"
    )
    out = chat(
        ["hi", "/tap delivery", "/location 52.37,4.89 Dam Square", "/quit"],
        "--flows-dir",
        str(tmp_path),
        "--flow",
        "where",
    )
    assert "Send your location." in out
    assert "Dam Square at 52.37, 4.89." in out


def test_trace_shows_each_transition_and_state_shows_the_callers(tmp_path: Path) -> None:
    from tests.test_subflows import write

    folder = write(tmp_path / "flows")
    out = chat(
        ["hi", "/trace", "bob", "/state", "hours", "/trace", "1 main street", "/quit"],
        "--flows-dir",
        str(folder),
        "--flow",
        "shop",
    )
    assert "(trace on)" in out
    assert ". shop: hello -> where (message)" in out
    assert ". address: (start) -> ask (start)" in out
    assert "flow=address state=ask" in out
    assert "called from flow=shop state=where" in out
    assert "(trace off)" in out
    assert ". address: ask -> ok" not in out  # traced no more
    assert "bot > Delivering to 1 main street for bob, fee 5.00." in out


def test_silence_and_a_location_that_is_not_one_are_explained(tmp_path: Path) -> None:
    (tmp_path / "quiet.yaml").write_text(
        "start: a\nstates:\n  a:\n    say: Hi\n    on:\n      - text: go\n        go: b\n"
        "  b:\n    end: true\n"
    )
    out = chat(
        ["hi", "go", "/location abc", "/quit"], "--flows-dir", str(tmp_path), "--flow", "quiet"
    )
    assert "(the bot sent nothing: this step has nothing to say)" in out
    assert "a person holds" not in out
    assert "(/location LAT,LNG [NAME], like /location 52.37,4.89 Home)" in out
