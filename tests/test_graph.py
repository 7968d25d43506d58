"""`flows graph`: a flow as mermaid, dot or svg, every transition labelled with what takes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import unavailable
from tests.support import ROOT

FLOW = """
start: ask
anywhere:
  - keywords: [agent]
    go: person
states:
  ask:
    say: {text: "Order?", buttons: [Yes, No]}
    on:
      - choice: yes
        go: qty
      - choice: no
        go: bye
    timeout:
      - after: 30m
        say: Still there?
      - after: 1d
        go: bye
  qty:
    say: How many?
    on:
      - type: integer
        min: 1
        max: 9
        save: n
        go: [{when: "n > 5", to: person}, {to: place}]
  place:
    action: http
    with: {url: "https://shop.example/orders", body: {n: "=n"}}
    on_done: bye
    on_error: person
  person:
    say: A person will answer.
    handoff: true
  bye:
    say: Bye.
    end: true
"""


def graph(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    path = tmp_path / "shop.yaml"
    path.write_text(textwrap.dedent(FLOW).lstrip("\n"))
    return subprocess.run(
        [sys.executable, "-m", "engine", "flows", "graph", str(path), *args],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_mermaid_labels_every_transition_and_draws_kinds_of_step_apart(tmp_path: Path) -> None:
    run = graph(tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.stdout.decode()
    for line in [
        'n_ask -->|"tap yes"| n_qty',
        'n_ask -->|"silent 30m: reminder"| n_ask',
        'n_ask -->|"silent 1d"| n_bye',
        'n_qty -->|"integer 1..9 if n > 5"| n_person',
        'n_qty -->|"integer 1..9 otherwise"| n_place',
        'n_place -->|"done"| n_bye',
        'n_place -->|"error"| n_person',
        'n_anywhere -.->|"says agent"| n_person',
        'n_place{{"place: http"}}',
        'n_person[["person (person)"]]',
        'n_bye(["bye"])',
    ]:
        assert line in out, (line, out)


def test_dot_and_a_file(tmp_path: Path) -> None:
    target = tmp_path / "shop.dot"
    run = graph(tmp_path, "--format", "dot", "-o", str(target))
    assert run.returncode == 0, run.stderr
    text = target.read_text()
    assert text.startswith('digraph "shop" {')
    assert 'n_qty -> n_place [label="integer 1..9 otherwise"];' in text
    assert "n_person [label=" in text and "fillcolor" in text


def test_svg_through_graphviz(tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        unavailable("Graphviz (dot)", FileNotFoundError("dot is not on PATH"))
    run = graph(tmp_path, "--format", "svg")
    assert run.returncode == 0, run.stderr
    assert run.stdout.lstrip().startswith(b"<?xml") and b"<svg" in run.stdout
    assert b"integer 1..9 otherwise" in run.stdout


def test_an_invalid_flow_or_a_missing_one_says_why(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "start: nowhere\nstates:\n  a:\n    say: hi\n    end: true\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "engine", "flows", "graph", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 1 and "bad.yaml:1: start: unknown state 'nowhere'" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "engine", "flows", "graph", "nothing"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 1 and "no flow 'nothing'" in run.stderr


def test_calls_jumps_and_digressions_are_drawn_apart(tmp_path: Path) -> None:
    from engine.flows.graph import mermaid
    from engine.flows.reader import read_flow
    from tests.test_subflows import write

    folder = write(tmp_path / "flows")
    spec, problems = read_flow(folder / "shop.yaml")
    assert spec is not None, problems
    text = mermaid(spec)
    assert 'n_where[/"where: call flow address"/]' in text
    assert 'n_confirm[\\"confirm: continue in flow survey"\\]' in text
    assert 'n_where -->|"returned"| n_confirm' not in text
    assert "n_where --> n_confirm" in text
    assert 'n_anywhere -.->|"says hours: call hours"| n_anywhere' in text
