"""Sub-flows: a call that comes back with outputs, a digression that returns to the step the
customer was at, a jump; the stack survives a restart, and timers, hand-offs and reloads inside
a called flow keep their meaning. The validator checks calls across the files of a folder."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from adapters.stores.sqlite import SqliteStore
from engine.flows import load_flows, validate_path
from tests.fakes.clock import FakeClock
from tests.test_timers import shop

SHOP = """
start: hello
anywhere:
  - keywords: [hours]
    say: "We open at 8."
    call: hours
states:
  hello:
    say: "Hi! Your name?"
    on:
      - regex: "^(?P<who>[a-z]+)$"
        when: "text != 'hours'"
        go: where
  where:
    call: address
    with: {who: "{who}", fee: "=2.50"}
    save: {place: address, fee: fee}
    then: confirm
  confirm:
    say: "Delivering to {place} for {who}, fee {= money(fee)}."
    flow: survey
"""
ADDRESS = """
inputs: {who: null, fee: "=0"}
outputs: [address, fee]
start: ask
states:
  ask:
    say: "Where shall we deliver, {who}?"
    on:
      - regex: "^(?P<address>.+ street)$"
        set: {fee: "= fee * 2"}
        go: ok
      - keywords: [agent]
        go: person
    timeout:
      - after: 30m
        say: "Still there, {who}?"
  ok:
    say: "Noted."
    end: true
  person:
    say: "A person will help."
    handoff: true
"""
HOURS = """
start: h
states:
  h:
    say: "Saturdays too."
    end: true
"""
SURVEY = """
start: q
states:
  q:
    say: "Rate us 1-5?"
    on:
      - type: integer
        go: bye
  bye:
    say: "Thanks!"
    end: true
"""


def write(folder: Path, **files: str) -> Path:
    folder.mkdir(exist_ok=True)
    texts = {"shop": SHOP, "address": ADDRESS, "hours": HOURS, "survey": SURVEY, **files}
    for name, text in texts.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    return folder


async def test_a_call_comes_back_with_its_outputs_then_a_jump_moves_on(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    assert await s.say("hi") == ["Hi! Your name?"]
    assert await s.say("bob") == ["Where shall we deliver, bob?"]
    view = await s.engine.view("n:1")
    assert (view["flow"], view["state"]) == ("address", "ask")
    assert view["stack"] == [{"flow": "shop", "state": "where"}]
    assert view["slots"] == {"who": "bob", "fee": "2.50"}  # the inputs, not the caller's slots
    assert await s.say("1 main street") == [
        "Noted.",
        "Delivering to 1 main street for bob, fee 5.00.",  # outputs saved into slots
        "Rate us 1-5?",
    ]
    view = await s.engine.view("n:1")
    assert (view["flow"], view["state"], view["stack"]) == ("survey", "q", [])
    assert await s.say("5") == ["Thanks!"]
    assert await s.say("hello again") == ["Hi! Your name?"]  # after an end: the entry flow


async def test_a_digression_returns_to_the_step_the_customer_was_at(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi")
    assert await s.say("hours") == ["We open at 8.", "Saturdays too.", "Hi! Your name?"]
    view = await s.engine.view("n:1")
    assert (view["flow"], view["state"], view["stack"]) == ("shop", "hello", [])
    assert await s.say("ana") == ["Where shall we deliver, ana?"]


async def test_the_stack_survives_a_restart(tmp_path: Path, opened: list[Any]) -> None:
    folder = write(tmp_path / "flows")
    clock = FakeClock()
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.open()
    s = await shop([], folder, store, clock)
    await s.say("hi")
    await s.say("bob")
    await s.engine.close()
    await store.close()
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.open()
    opened.append(store.close)
    s = await shop(opened, folder, store, clock)
    s.n = 10  # new message ids: the first ones are known to the store's dedupe
    assert await s.say("9 elm street") == [
        "Noted.",
        "Delivering to 9 elm street for bob, fee 5.00.",
        "Rate us 1-5?",
    ]


async def test_a_reminder_inside_a_called_flow_fires_there(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi")
    await s.say("bob")
    assert await s.wait(31 * 60) == ["Still there, bob?"]
    assert (await s.engine.view("n:1"))["stack"] == [{"flow": "shop", "state": "where"}]


async def test_a_person_taking_over_in_a_called_flow_hands_back_to_the_outermost(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi")
    await s.say("bob")
    assert await s.say("agent") == ["A person will help."]
    await s.engine.release("n:1")
    view = await s.engine.view("n:1")
    assert (view["flow"], view["stack"]) == ("shop", [])
    assert await s.say("hello") == ["Hi! Your name?"]


async def test_a_reload_that_removes_the_caller_starts_the_entry_flow(
    tmp_path: Path, opened: list[Any]
) -> None:
    folder = write(tmp_path / "flows")
    s = await shop(opened, folder)
    await s.say("hi")
    await s.say("bob")
    # The caller's step is no longer a call: the caller starts again when the callee ends.
    changed = (
        SHOP.replace(
            '    call: address\n    with: {who: "{who}", fee: "=2.50"}\n'
            "    save: {place: address, fee: fee}\n    then: confirm\n",
            '    say: "Where?"\n    then: confirm\n',
        )
        .replace("{place}", "{who}")
        .replace("{= money(fee)}", "none")
    )
    write(folder, shop=changed)
    s.engine.reload(load_flows(folder, "shop"))
    assert await s.say("1 main street") == ["Noted.", "Hi! Your name?"]
    assert (await s.engine.view("n:1"))["stack"] == []


def problems(folder: Path) -> list[tuple[str, int, str]]:
    return [(Path(p.file).name, p.line, p.message) for p in validate_path(folder)]


def test_calls_are_checked_against_the_flows_beside_them(tmp_path: Path) -> None:
    shop_text = """
    start: a
    states:
      a:
        call: adress
        then: b
      b:
        call: address
        with: {who: x, color: red}
        save: {place: street}
        then: c
      c:
        say: "{place}"
        flow: survey
        with: {size: 1}
    """
    found = problems(write(tmp_path / "f", shop=shop_text))
    assert (
        "shop.yaml",
        4,
        "call: no flow 'adress' beside this one (did you mean 'address'?)",
    ) in found
    assert (
        "shop.yaml",
        7,
        "with: 'color' is not an input of flow 'address' (its inputs: who, fee)",
    ) in found
    assert (
        "shop.yaml",
        7,
        "save: place: 'street' is not an output of flow 'address' (its outputs: address, fee)",
    ) in found
    assert (
        "shop.yaml",
        13,
        "with: 'size' is not an input of flow 'survey' (its inputs: none)",
    ) in found
    assert len(found) == 4, found


def test_a_required_input_circles_and_a_flow_that_never_ends(tmp_path: Path) -> None:
    shop_text = """
    start: a
    states:
      a:
        call: address
        then: b
      b:
        call: loop
        then: a
    """
    loop = """
    start: x
    states:
      x:
        call: shop
        then: y
      y:
        say: again
        on:
          - text: ok
            go: x
    """
    found = problems(write(tmp_path / "f", shop=shop_text, loop=loop))
    assert (
        "shop.yaml",
        4,
        "call: flow 'address' needs the input 'who' (with: {who: ...})",
    ) in found
    assert ("shop.yaml", 7, "call: flow 'loop' has no end: step, so it never comes back") in found
    assert ("loop.yaml", 4, "call: flow 'shop' has no end: step, so it never comes back") in found
    assert (
        "loop.yaml",
        4,
        "call: loop -> shop -> loop calls round a circle; use flow: to jump instead",
    ) in found


def test_call_step_shapes(tmp_path: Path) -> None:
    shop_text = """
    start: a
    states:
      a:
        call: hours
        on:
          - text: x
            go: a
      b:
        say: hi
        with: {x: 1}
        then: a
    """
    found = problems(write(tmp_path / "f", shop=shop_text))
    messages = {(line, m) for _f, line, m in found}
    assert (4, "call: needs then: (where to go when it ends)") in messages
    assert (4, "call: is a step of its own (no action: or on:)") in messages
    assert (10, "with: belongs to a step with action:") in messages


def test_outputs_must_be_slots_the_flow_sets_and_inputs_count_as_set(tmp_path: Path) -> None:
    address = ADDRESS.replace("outputs: [address, fee]", "outputs: [address, fee, zip]")
    found = problems(write(tmp_path / "f", address=address))
    assert found == [("address.yaml", 2, "outputs: 'zip' is not a slot this flow sets")]
    # {who} is shown in the callee's first step without a warning: inputs are set at its start.


def test_calls_nested_deeper_than_the_engine_allows_are_refused(tmp_path: Path) -> None:
    def chained(count: int) -> dict[str, str]:
        files = {}
        for i in range(count):
            last = i == count - 1
            body = (
                "    say: bottom\n    end: true\n" if last else f"    call: f{i + 1}\n    then: b\n"
            )
            files[f"f{i}"] = f"start: a\nstates:\n  a:\n{body}" + (
                "" if last else "  b:\n    end: true\n"
            )
        return files

    folder = tmp_path / "ok"
    folder.mkdir()
    for name, text in chained(9).items():  # 8 calls inside each other: the most allowed
        (folder / f"{name}.yaml").write_text(text)
    assert validate_path(folder) == []
    folder = tmp_path / "deep"
    folder.mkdir()
    for name, text in chained(10).items():
        (folder / f"{name}.yaml").write_text(text)
    found = problems(folder)
    assert found == [
        (
            "f0.yaml",
            4,
            "call: 9 calls inside each other (f0 -> f1 -> f2 -> f3 -> f4 -> f5 -> f6"
            " -> f7 -> f8 -> f9); at most 8 can be",
        )
    ], found


async def test_an_input_that_cannot_be_computed_is_nothing_not_a_restart(
    tmp_path: Path, opened: list[Any]
) -> None:
    shop = SHOP.replace(
        'with: {who: "{who}", fee: "=2.50"}', 'with: {who: "{who}", fee: "=[1][5]"}'
    )
    s = await shop_of(opened, tmp_path, shop)
    await s.say("hi")
    assert await s.say("bob") == ["Where shall we deliver, bob?"]  # no apology, no restart
    view = await s.engine.view("n:1")
    assert (view["flow"], view["slots"]) == ("address", {"who": "bob", "fee": None})


async def shop_of(opened: list[Any], tmp: Path, text: str) -> Any:
    return await shop(opened, write(tmp / "flows", shop=text))
