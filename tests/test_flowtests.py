"""`python -m engine flows test`: conversation tests in YAML beside the flows, on the real
engine with a virtual clock and declared action results; failures name the file:line and show
what differed. pytest collects the same files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

from engine.flowtests import run_tests
from tests.support import ROOT

SHOP = """
start: ask
states:
  ask:
    say: {text: "How many cakes?", buttons: [One, Two]}
    on:
      - type: integer
        save: qty
        go: when
  when:
    say: When?
    on:
      - type: datetime
        save: at
        go: where
    timeout:
      - after: 30m
        say: Still there?
  where:
    say: Where to?
    on:
      - kind: location
        save: place
        go: place
  place:
    action: create_order
    with: {qty: "=qty", at: "{at}"}
    save: {order: id}
    on_done: done
    on_error: sorry
  done:
    say: "Order {order}: {qty} cakes to {= place.name}."
    end: true
  sorry:
    say: "Sorry ({= error.kind})."
    end: true
"""
ACTIONS = """
from engine.actions import action


@action
def create_order(qty, at):
    raise RuntimeError("flows test never calls the real action")
"""
TESTS = """
flow: shop
at: 2026-12-07T10:00
actions:
  create_order: {returns: {id: BP-7}}
tests:
  - name: an order on the virtual clock
    steps:
      - say: hello
        expect: {buttons: [One, Two]}
      - say: "3 cakes"
        expect: {text: "When?", slots: {qty: 3}}
      - wait: 31m
        expect: {text: "Still there?"}
      - say: tomorrow 5pm
        expect: {slots: {at: "2026-12-08T17:00+00:00"}, state: where}
      - location: 52.37,4.89 Home
        expect:
          text: "Order BP-7: 3 cakes to Home."
          action: {name: create_order, with: {qty: 3}}
          flow: shop
  - name: the action fails
    actions:
      create_order: {fails: unavailable}
    steps:
      - say: hi
      - say: "2"
      - say: "tomorrow 9am"
      - location: 1,2
        expect: {text: "Sorry (unavailable)."}
"""


def folder(tmp: Path, tests: str = TESTS) -> Path:
    flows = tmp / "flows"
    (flows / "tests").mkdir(parents=True)
    (flows / "shop.yaml").write_text(textwrap.dedent(SHOP).lstrip("\n"))
    (flows / "actions.py").write_text(textwrap.dedent(ACTIONS).lstrip("\n"))
    (flows / "tests" / "shop.yaml").write_text(textwrap.dedent(tests).lstrip("\n"))
    return flows


def run(path: Path) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = run_tests(path, None, ZoneInfo("UTC"), lines.append)
    return code, lines


def test_typed_answers_timers_places_and_actions_pass(tmp_path: Path) -> None:
    code, lines = run(folder(tmp_path))
    assert lines[-1] == "2 passed, 0 failed", lines
    assert code == 0


def test_a_failure_names_its_line_and_shows_what_differed(tmp_path: Path) -> None:
    tests = (
        TESTS.replace("expect: {buttons: [One, Two]}", "expect: {buttons: [One, Three]}")
        .replace("slots: {qty: 3}", "slots: {qty: 4}")
        .replace("fails: unavailable", "fails: rejected")
    )
    code, lines = run(folder(tmp_path, tests))
    text = "\n".join(lines)
    assert code == 1
    file = tmp_path / "flows" / "tests" / "shop.yaml"
    assert f"FAIL {file}:8: an order on the virtual clock, step 1 (say: hello)" in text
    assert "buttons differ (- expected, + offered):\n      One\n    - Three\n    + Two" in text
    assert "step 2" not in text  # a test stops at its first failing step
    assert f"FAIL {file}:28: the action fails, step 4 (location: 1,2)" in text
    assert (
        "expected a reply containing 'Sorry (unavailable).'; the bot said:\n    | Sorry (rejected)."
        in text
    )
    assert lines[-1] == "0 passed, 2 failed"


def test_slots_and_actions_that_differ(tmp_path: Path) -> None:
    tests = TESTS.replace("slots: {qty: 3}", "slots: {qty: 4}")
    _code, lines = run(folder(tmp_path, tests))
    text = "\n".join(lines)
    assert "step 2 (say: 3 cakes)" in text
    assert "slot qty differs (- expected, + has):\n    - '4'\n    + '3'" in text
    tests = TESTS.replace("with: {qty: 3}", "with: {qty: 5}")
    _code, lines = run(folder(tmp_path / "b", tests))
    assert any("action create_order: qty is '3', expected '5'" in line for line in lines), lines


def test_mistakes_in_a_test_file_are_reported_at_their_line(tmp_path: Path) -> None:
    tests = TESTS.replace("      - say: hello\n", "      - tapp: Two\n").replace(
        "      - wait: 31m\n", "      - wait: soon\n"
    )
    code, lines = run(folder(tmp_path, tests))
    file = tmp_path / "flows" / "tests" / "shop.yaml"
    assert code == 1
    assert f"{file}:8: unknown key 'tapp' in step (did you mean 'tap'?)" in lines
    assert any(line.startswith(f"{file}:12: wait: ") for line in lines), lines


def test_no_tests_is_a_failure(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    code, lines = run(tmp_path / "flows")
    assert code == 1 and "no flow tests" in lines[0]


def test_pytest_collects_flow_tests_and_reports_the_line(tmp_path: Path) -> None:
    flows = folder(tmp_path, TESTS.replace("Order BP-7", "Order BP-8"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(flows),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert "1 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert "shop.yaml:16: an order on the virtual clock, step 5" in result.stdout


def test_the_command_runs_the_shipped_flows_tests() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine", "flows", "test"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("passed, 0 failed")


def test_every_shipped_flow_has_tests() -> None:
    flows = {p.stem for p in (ROOT / "flows").glob("*.yaml")} - {"templates"}
    tested = set()
    for file in (ROOT / "flows" / "tests").glob("*.yaml"):
        from engine.flowtests import read_cases

        cases, problems = read_cases(file)
        assert problems == []
        tested |= {c.flow for c in cases}
    assert flows <= tested


def test_an_action_without_a_declared_result_fails_the_step_that_called_it(
    tmp_path: Path,
) -> None:
    tests = TESTS.replace("actions:\n  create_order: {returns: {id: BP-7}}\n", "")
    _code, lines = run(folder(tmp_path, tests))
    text = "\n".join(lines)
    assert "step 5 (location: 52.37,4.89 Home)" in text
    assert "action 'create_order' was called, and the test declares no result for it" in text


def test_a_long_wait_runs_every_timer_on_the_way_at_its_own_time(tmp_path: Path) -> None:
    shop = SHOP.replace(
        "      - after: 30m\n        say: Still there?\n",
        "      - after: 30m\n        say: Still there?\n      - after: 20h\n"
        "        say: Closing.\n        go: sorry\n",
    )
    tests = """
    flow: shop
    tests:
      - name: both rungs within one wait, the first inside the 24-hour window
        steps:
          - say: hi
          - say: "2"
          - wait: 25h
            expect: {text: ["Still there?", "Closing."], state: sorry}
    """
    flows = folder(tmp_path, tests)
    (flows / "shop.yaml").write_text(textwrap.dedent(shop).lstrip("\n"))
    code, lines = run(flows)
    assert code == 0, lines


def test_names_the_flows_do_not_have_and_taps_of_what_was_never_offered(tmp_path: Path) -> None:
    tests = TESTS.replace("flow: shop", "flow: shopp").replace(
        "create_order: {returns", "create_ordr: {returns"
    )
    code, lines = run(folder(tmp_path, tests))
    file = tmp_path / "flows" / "tests" / "shop.yaml"
    assert code == 1
    assert f"{file}:1: flow: no flow 'shopp' beside these tests (did you mean 'shop'?)" in lines
    assert (
        f"{file}:4: actions: no action 'create_ordr' in these flows (did you mean 'create_order'?)"
        in lines
    )
    tests = TESTS.replace(
        "        expect: {buttons: [One, Two]}\n",
        "      - tap: Three\n",
    )
    _code, lines = run(folder(tmp_path / "b", tests))
    text = "\n".join(lines)
    assert (
        "step 2 (tap: Three)\n  no message of this test offered 'Three'; the last offered: One (one), Two (two)"
        in text
    )


def test_a_flow_file_or_a_folder_without_tests(tmp_path: Path) -> None:
    flows = folder(tmp_path)
    code, lines = run(flows / "shop.yaml")  # the tests of that flow
    assert code == 0 and lines[-1] == "2 passed, 0 failed", lines
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "main.yaml").write_text("start: a\nstates:\n  a:\n    end: true\n")
    code, lines = run(tmp_path / "other")
    assert code == 1 and "no flow tests" in lines[0], lines


def test_slots_compare_as_numbers_and_bad_times_are_problems(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    (flows / "tests").mkdir(parents=True)
    (flows / "calc.yaml").write_text(
        'slots: {five: "=5", dec: "=2.50", flag: "=false", zero: "=0", word: "5 cakes"}\n'
        "start: a\nstates:\n  a:\n    say: \"{= merge({'n': five}, {'m': 1}).n}\"\n"
        "    end: true\n"
    )
    (flows / "tests" / "calc.yaml").write_text(
        "tests:\n  - name: numbers\n    steps:\n      - say: hi\n"
        "        expect: {text: '5', slots: {five: 5, dec: 2.5, flag: false, zero: 0, word: 5 cakes}}\n"
        "  - name: zero is not no\n    steps:\n      - say: hi\n"
        "        expect: {slots: {zero: false}}\n"
    )
    code, lines = run(flows)
    assert lines[0].startswith("ok ") and lines[1].startswith("FAIL "), lines
    assert lines[-1] == "1 passed, 1 failed"
    (flows / "tests" / "calc.yaml").write_text(
        "at: 10:00\ntests:\n  - name: a\n    at: 9999-12-31T23:00\n    steps:\n"
        "      - wait: 100000000d\n      - say: [a, b]\n"
    )
    code, lines = run(flows)
    file = flows / "tests" / "calc.yaml"
    assert code == 1
    assert any(
        line.startswith(f"{file}:1: at: a date and time like 2026-12-07T10:00") for line in lines
    ), lines
    assert any(line.startswith(f"{file}:4: at: a date and time like") for line in lines), lines
    assert f"{file}:6: wait: at most 400d" in lines
    assert f"{file}:7: say: the text the customer sends" in lines


def test_a_bad_test_file_fails_alone_under_pytest(tmp_path: Path) -> None:
    flows = folder(tmp_path)
    (flows / "tests" / "broken.yaml").write_text("flow: shop\ntests:\n  - name: x\n    stepz: []\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(flows),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert "1 failed, 2 passed" in result.stdout, result.stdout + result.stderr
    assert "broken.yaml:4: unknown key 'stepz' in test (did you mean 'steps'?)" in result.stdout


def test_a_test_files_timezone_is_the_one_typed_dates_are_read_in(tmp_path: Path) -> None:
    tests = TESTS.replace(
        "at: 2026-12-07T10:00\n", "at: 2026-12-07T10:00\ntimezone: Asia/Kolkata\n"
    )
    tests = tests.replace('"2026-12-08T17:00+00:00"', '"2026-12-08T17:00+05:30"')
    code, lines = run(folder(tmp_path, tests))
    assert code == 0, lines
    bad = TESTS.replace("at: 2026-12-07T10:00\n", "at: 2026-12-07T10:00\ntimezone: Mars/Olympus\n")
    code, lines = run(folder(tmp_path / "b", bad))
    assert code == 1
    assert any("timezone: 'Mars/Olympus' is not an IANA time zone name" in line for line in lines)


def test_an_action_step_calls_from_the_business_side_and_checks_what_it_gave(
    tmp_path: Path,
) -> None:
    tests = """
    flow: shop
    actions:
      create_order: {returns: {id: BP-9, paid: false}}
    tests:
      - name: a call that gives what is expected
        steps:
          - say: hi
          - action: create_order
            with: {qty: 2, at: "2026-12-08"}
            expect: {result: {id: BP-9}, action: {name: create_order, with: {qty: 2}}}
      - name: a call whose result differs
        steps:
          - action: create_order
            with: {qty: 2, at: x}
            expect: {result: {id: BP-1}}
      - name: a call with a parameter the action does not take
        steps:
          - action: create_order
            with: {qty: 2, when: x}
      - name: a call expected to fail that does not
        steps:
          - action: create_order
            with: {qty: 2, at: x}
            expect: {error: refused}
    """
    code, lines = run(folder(tmp_path, tests))
    text = "\n".join(lines)
    assert code == 1 and "1 passed, 3 failed" in text, text
    assert "result id differs (- expected, + has):" in text
    assert "step 1 (action: create_order)" in text
    assert "the action failed (with): action 'create_order' needs at in with:" in text
    assert "has no parameter 'when'" in text
    assert "expected the action to fail with 'refused'; it gave" in text
