"""`flows validate` reports every problem at its exact file:line (seeded mistakes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.flows import load_flows, validate_path
from engine.flows.reader import read_flow
from engine.flows.source import load
from tests.support import ROOT


def write(tmp: Path, text: str, name: str = "shop.yaml") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(tmp: Path, text: str) -> list[tuple[int, str]]:
    path = write(tmp, text)
    return [(p.line, p.message) for p in validate_path(path)]


GOOD = """
start: hello
states:
  hello:
    say: Hi!
    then: ask
  ask:
    say:
      text: Pick one
      buttons: [Yes, No]
    on:
      - choice: yes
        go: bye
      - choice: no
        go: hello
  bye:
    say: Bye
    end: true
"""


def test_a_good_flow_has_no_problems(tmp_path: Path) -> None:
    assert problems(tmp_path, GOOD) == []


def test_shipped_flows_are_valid() -> None:
    """Every file in flows/ loads and validates; the CLI agrees and exits 0."""
    assert validate_path(ROOT / "flows") == []
    flows = load_flows(ROOT / "flows", "support")
    assert "support" in flows.by_name
    result = subprocess.run(
        [sys.executable, "-m", "engine", "flows", "validate", str(ROOT / "flows")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yaml_yes_and_no_stay_words() -> None:
    """YAML 1.1 would read yes/no/on/off as booleans and silently merge keys; we keep words."""
    doc, issues = load("yes: a\nno: b\non: c\noff: d\nreal: true\n")
    assert issues == []
    assert doc == {"yes": "a", "no": "b", "on": "c", "off": "d", "real": True}
    assert load("n: 100\nf: 1.50\n")[0] == {"n": "100", "f": "1.50"}


SEEDED = [
    (
        "unknown target",
        """
        start: hello
        states:
          hello:
            say: Hi
            on:
              - text: start
                go: menu
              - text: menu
                go: meun
          menu:
            say: The menu
            end: true
        """,
        [(9, "go to unknown state 'meun' (did you mean 'menu'?)")],
    ),
    (
        "unreachable state",
        """
        start: hello
        states:
          hello:
            say: Hi
            end: true
          lost:
            say: nobody comes here
            end: true
        """,
        [(6, "state 'lost' is unreachable from start 'hello'")],
    ),
    (
        "duplicate state and typo'd key",
        """
        start: hello
        states:
          hello:
            say: Hi
            end: true
          hello:
            sya: Hi again
            end: true
        """,
        [(6, "duplicate key 'hello' (first at line 3)")],
    ),
    (
        "unknown key",
        """
        start: hello
        states:
          hello:
            sya: Hi
            end: true
        """,
        [(4, "unknown key 'sya' in state 'hello' (did you mean 'say'?)")],
    ),
    (
        "four buttons and a long title",
        """
        start: pick
        states:
          pick:
            say:
              text: Choose
              buttons: [One, Two, Three, A title that is far too long]
            on:
              - choice: one
                go: pick
        """,
        [
            (6, "4 buttons: WhatsApp allows at most 3 (use list: for more)"),
            (6, "button title is 28 characters; WhatsApp allows 20"),
        ],
    ),
    (
        "list limits",
        """
        start: pick
        states:
          pick:
            say:
              text: Choose
              header: "<H>"
              list:
                button: Open the catalogue now
                rows:
                  - {id: a, title: "A row title longer than 24", description: "<D>"}
                  - b
                  - c
                  - d
                  - e
                  - f
                  - g
                  - h
                  - i
                  - j
                  - k
            on:
              - choice: a
                go: pick
        """.replace("<H>", "H" * 61).replace("<D>", "D" * 73),
        [
            (6, "header is 61 characters; WhatsApp allows 60"),
            (7, "11 list rows: WhatsApp allows at most 10 in all"),
            (8, "list button is 22 characters; WhatsApp allows 20"),
            (10, "row title is 26 characters; WhatsApp allows 24"),
            (10, "row description is 73 characters; WhatsApp allows 72"),
        ],
    ),
    (
        "text and button body too long",
        """
        start: a
        states:
          a:
            say: "<X>"
            then: b
          b:
            say:
              text: "<Y>"
              buttons: [Ok]
            on:
              - choice: ok
                go: a
        """.replace("<X>", "x" * 4097).replace("<Y>", "y" * 1025),
        [
            (4, "text is 4097 characters; WhatsApp allows 4096"),
            (8, "text with buttons is 1025 characters; WhatsApp allows 1024"),
        ],
    ),
    (
        "then loop never waits",
        """
        start: a
        states:
          a:
            say: one
            then: b
          b:
            say: two
            then: a
        """,
        [(5, "loop a -> b -> a never waits for the customer")],
    ),
    (
        "choice not offered, bad regex, unknown placeholder",
        """
        start: ask
        states:
          ask:
            say:
              text: "Hello {nmae}"
              buttons: [Yes]
            on:
              - choice: maybe
                go: ask
              - regex: "([0-9]+"
                go: ask
        """,
        [
            (5, "unknown placeholder {nmae}: no step sets a slot by that name"),
            (8, "choice 'maybe' is not a button or row of state 'ask' (it offers: yes)"),
            (10, "regex: invalid pattern: missing ) at position 7"),
        ],
    ),
    (
        "stray braces",
        """
        start: a
        states:
          a:
            say: "Total {amount|{zero}} and } then {{literal}}"
            end: true
        """,
        [
            (
                4,
                "text: stray brace; write {{ or }} for a literal brace, {slot} or {slot|default} for a value, {= expression} for a computed one",
            ),
            (4, "unknown placeholder {zero}: no step sets a slot by that name"),
        ],
    ),
    (
        "state mode and bad names",
        """
        start: _secret
        states:
          _secret:
            say: hi
          ok:
            say: hi
            end: true
            then: _secret
        """,
        [
            (3, "state name '_secret': names may not be empty or start with '_'"),
            (
                3,
                "state '_secret' needs exactly one of on:, then:, action:, answer:, extract:, flow:, handoff: true or end: true (has none)",
            ),
            (
                5,
                "state 'ok' needs exactly one of on:, then:, action:, answer:, extract:, flow:, handoff: true or end: true (has then and end)",
            ),
            (5, "state 'ok' is unreachable from start '_secret'"),
        ],
    ),
    (
        "re-prompt ladder: go only last, target must exist",
        """
        start: ask
        states:
          ask:
            say: Type a number
            on:
              - regex: "^(?P<n>[0-9]+)$"
                go: ask
            otherwise:
              - say: Numbers only please
                go: ask
              - say: Last try
                go: human
        """,
        [
            (10, "otherwise: only the last re-prompt may have go:"),
            (12, "go to unknown state 'human'"),
        ],
    ),
    (
        "expressions: unknown names with a hint, syntax, forbidden calls, in every place",
        """
        start: a
        slots:
          total: "= 0"
        states:
          a:
            say: "Total {= money(totl)}"
            set: {fee: "= total *"}
            on:
              - keywords: [pay]
                when: "totl > 10"
                go: a
              - when: "open('x')"
                go: a
              - text: [fee]
                set: {shown: "= fee + discount"}
        """,
        [
            (
                6,
                "unknown name 'totl' in 'money(totl)': no step sets a slot by that name (did you mean 'total'?)",
            ),
            (7, "expression 'total *': not an expression: invalid syntax"),
            (
                10,
                "unknown name 'totl' in 'totl > 10': no step sets a slot by that name (did you mean 'total'?)",
            ),
            (
                12,
                "expression \"open('x')\": unknown function 'open'; use one of len, sum, min, max, abs, round, int, number, money, text, lower, upper, trim, default, join, find, where, remove, update, merge, format_date",
            ),
            (15, "unknown name 'discount' in 'fee + discount': no step sets a slot by that name"),
        ],
    ),
    (
        "routes: a default last, and only last",
        """
        start: a
        states:
          a:
            say: Hi
            on:
              - text: [go]
                go:
                  - to: b
                  - when: "1 > 0"
                    to: c
            then:
              - when: "2 > 1"
                to: b
          b: {say: B, end: true}
          c: {say: C, end: true}
        """,
        [
            (
                3,
                "state 'a' needs exactly one of on:, then:, action:, answer:, extract:, flow:, handoff: true or end: true (has on and then)",
            ),
            (8, "go: only the last route may go without when:"),
            (10, "go: end the routes with one that has no when: (where to go otherwise)"),
            (13, "then: end the routes with one that has no when: (where to go otherwise)"),
        ],
    ),
    (
        "a branch with neither a condition nor when:",
        """
        start: a
        states:
          a:
            say: Hi
            on:
              - say: what
                go: a
        """,
        [
            (
                6,
                "a branch needs one of choice, text, keywords, regex, kind, faq, type, or when: alone"
                " (has 0)",
            )
        ],
    ),
    (
        "timers on steps that do not wait, and ladders out of order",
        """
        start: a
        states:
          a:
            say: Hi
            then: b
            timeout: {after: 5m, say: "hello"}
          b:
            say: Wait
            after: soon
            then: c
          c:
            say: C
            after: 10m
            end: true
          d:
            say: D
            on:
              - text: [x]
                go: a
            timeout:
              - after: 1h
                go: a
              - after: 2h
                say: late
              - after: 90m
                say: early
              - {say: no after}
        """,
        [
            (
                6,
                "timeout: only applies to a step that waits for the customer (on:); to wait before moving on, write after: with then:",
            ),
            (9, "after: 'soon' is not a duration like 30s, 15m, 24h or 7d"),
            (13, "after: delays then:; this step has no then:"),
            (15, "state 'd' is unreachable from start 'a'"),
            (21, "timeout: a rung with go: leaves the step; later rungs never run"),
            (
                25,
                "timeout: each rung's after: must be longer than the one before (all count from when the step began waiting)",
            ),
            (27, "timeout: each rung needs after: (30m, 24h ...)"),
        ],
    ),
    (
        "yaml syntax",
        """
        start: a
        states:
          a:
            say: [unclosed
        """,
        [(5, "YAML syntax error: expected ',' or ']', but got '<stream end>'")],
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), SEEDED, ids=[c[0] for c in SEEDED])
def test_seeded_mistakes_are_reported_at_their_line(
    tmp_path: Path, case: str, text: str, expected: list[tuple[int, str]]
) -> None:
    assert sorted(problems(tmp_path, text)) == sorted(expected)


def test_cli_prints_file_line_message_and_exits_1(tmp_path: Path) -> None:
    """The CLI output is `file:line: message`, one per problem."""
    path = write(tmp_path, SEEDED[0][1])
    result = subprocess.run(
        [sys.executable, "-m", "engine", "flows", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{path}:9: go to unknown state 'meun' (did you mean 'menu'?)"
    ]


def test_faq_file_problems_point_into_the_faq_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "faq.yaml").write_text(
        "- question: Hours?\n  keywords: hours\n  answer: 9 to 5\n"
    )
    write(
        tmp_path,
        "start: a\nfaq: data/faq.yaml\nstates:\n  a:\n    say: Ask\n    on:\n      - faq: true\n        go: a\n",
    )
    found = validate_path(tmp_path / "shop.yaml")
    assert [(Path(p.file).name, p.line, p.message) for p in found] == [
        ("faq.yaml", 2, "keywords: a non-empty list of words or phrases")
    ]


def test_names_that_would_break_a_state_machine_are_mapped(tmp_path: Path) -> None:
    """States called send, model or 'ask name' are fine: the machine never sees those names."""
    text = """
    start: send
    states:
      send:
        say: Hi
        then: model
      model:
        say: "What's your name?"
        then: ask name
      ask name:
        on:
          - kind: text
            save: who
            go: configuration
      configuration:
        say: "Nice to meet you, {who}"
        end: true
    """
    path = write(tmp_path, text)
    spec, found = read_flow(path)
    assert found == [] and spec is not None


# --- mistakes that used to pass ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# just a comment\n\n# another\n", "\n\n"])
def test_an_empty_or_comment_only_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert [(p.line, p.message) for p in validate_path(path)] == [
        (1, "the file holds no flow (it is empty or only comments)")
    ]


def test_an_unclosed_quote_points_at_the_line_that_opens_it(tmp_path: Path) -> None:
    text = 'start: a\nstates:\n  a:\n    say: "Hello\n    end: true\n  b:\n    say: x\n'
    path = tmp_path / "q.yaml"
    path.write_text(text)
    assert [(p.line, p.message) for p in validate_path(path)] == [
        (4, "YAML syntax error: a quote opened here is never closed")
    ]


def test_faq_true_without_a_faq_file_points_at_the_branch(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        start: a
        states:
          a:
            say: Ask me.
            on:
              - text: hi
                say: Hi.
              - faq: true
        """,
    )
    assert found == [(8, "faq: true, but the flow names no faq: file")]


def test_two_list_sections_need_titles(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        start: a
        states:
          a:
            say:
              text: Pick one
              list:
                button: Menu
                sections:
                  - title: Pizza
                    rows: [Margherita]
                  - rows: [Cola]
            on:
              - choice: [margherita, cola]
                go: a
        """,
    )
    assert found == [(11, "section: needs a title: when a list has several sections")]


def warnings_of(tmp: Path, text: str) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in validate_path(write(tmp, text)) if p.warning]


def test_a_comma_string_of_keywords_is_a_warning_and_the_flow_still_loads(
    tmp_path: Path,
) -> None:
    text = """
    start: a
    anywhere:
      - keywords: agent, human
        go: person
    states:
      a:
        say: Hi
        on:
          - text: hi
            go: a
      person:
        say: A person will answer.
        handoff: true
    """
    assert warnings_of(tmp_path, text) == [
        (
            3,
            "keywords: 'agent, human' is one phrase, commas included; for several, write a"
            " list: [agent, human]",
        )
    ]
    flows = load_flows(tmp_path, "shop")
    assert [w.line for w in flows.warnings] == [3]
    run = subprocess.run(
        [sys.executable, "-m", "engine", "flows", "validate", str(tmp_path / "shop.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"{tmp_path / 'shop.yaml'}:3: warning: keywords:" in run.stdout
    assert "1 warning(s)" in run.stdout


@pytest.mark.parametrize(
    "catch_all",
    ["kind: text", "kind: any", 'regex: ".*"', "type: text"],
)
def test_a_catch_all_branch_that_hides_anywhere_is_a_warning(
    tmp_path: Path, catch_all: str
) -> None:
    text = f"""
    start: ask
    anywhere:
      - keywords: [agent]
        go: person
    states:
      ask:
        say: What's your address?
        on:
          - {catch_all}
            save: address
            go: done
      done:
        say: "Delivering to {{address}}"
        end: true
      person:
        say: A person will answer.
        handoff: true
    """
    assert warnings_of(tmp_path, text) == [
        (
            9,
            "this branch of 'ask' takes every message, so the anywhere: branches (line 3) never"
            " run in this step; give it a when:, or repeat the ones it needs before it",
        )
    ]
    guarded = text.replace(f"- {catch_all}", f'- {catch_all}\n        when: "len(text) > 3"')
    assert warnings_of(tmp_path, guarded) == []


def test_a_slot_shown_on_a_path_that_never_sets_it_is_a_warning(tmp_path: Path) -> None:
    """The customer saw "order number is *BP-*": one path to the step skipped the lookup."""
    text = """
    start: ask
    states:
      ask:
        say: Track or talk?
        on:
          - text: track
            go: lookup
          - text: skip
            go: shown
      lookup:
        say: Your order number?
        on:
          - regex: "(?P<order>BP-[0-9]+)"
            go: shown
      shown:
        say: "Your order number is *{order}*, {name}. {size|Medium} size."
        end: true
    """
    assert warnings_of(tmp_path, text) == [
        (
            16,
            "{order} may be empty here: a path to 'shown' does not set it; write {order|...}"
            " with a default, or set it on every path",
        )
    ]
    # Set on every path (or with a default), nothing to say.
    every = text.replace(
        "go: shown\n      lookup:", "set: {order: none}\n            go: shown\n      lookup:"
    )
    assert warnings_of(tmp_path, every) == []
    assert warnings_of(tmp_path, text.replace("{order}", "{order|unknown}")) == []


def test_yaml_that_would_expand_or_nest_without_end_is_refused_at_its_line(tmp_path: Path) -> None:
    """A few hundred bytes of nested aliases ("billion laughs") would need gigabytes; a deep
    nest of lists would exhaust Python's recursion: both are problems at a line, in a flow and
    in a data file."""
    from engine.flows import validate_path

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    deep = "[" * 3000 + "]" * 3000 + "\n"
    for i, text in enumerate((bomb, deep)):
        folder = tmp_path / f"f{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "flow.yaml").write_text(text)
        (folder / "other.yaml").write_text(
            "data: {t: data/t.yaml}\nstart: a\nstates:\n  a:\n    end: true\n"
        )
        (folder / "data" / "t.yaml").write_text(text)
        found = {(Path(p.file).name, p.line, p.message) for p in validate_path(folder)}
        if i == 0:
            message = "this expands to more than 1,000,000 values (YAML aliases: &name, *name)"
            assert found == {("flow.yaml", 7, message), ("t.yaml", 7, message)}
        else:
            message = "YAML nested more than 64 levels deep"
            assert found == {("flow.yaml", 1, message), ("t.yaml", 1, message)}
