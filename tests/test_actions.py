"""Actions: a flow calls business code by name, outside the actor's run slot, bounded in time,
recorded before it runs so a crash makes it again with the same key (on a clock tests move)."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.stores.sqlite import SqliteStore
from engine.engine import Engine
from engine.flows import validate_path
from engine.ports import Store
from tests import test_timers as timers
from tests.fakes.clock import FakeClock
from tests.support import Recorder

SHOP = """
start: ask
states:
  ask:
    say: "What would you like?"
    on:
      - text: order
        set: {qty: "=2"}
        go: place
      - text: look
        go: lookup
    otherwise:
      - say: "Say order."
  place:
    action: create_order
    with: {items: [pizza], qty: "=qty", price: "=9.50", note: "for {qty}"}
    save: {order: id, total: total}
    on_done: placed
    on_error: sorry
  placed:
    say: "Order {order}: total {= total * 2}."
    then: ask
  sorry:
    say: "Could not place it ({= error.kind}: {= error.message})."
    then: ask
  lookup:
    action: lookup
    within: 3s
    save: found
    on_done: shown
    on_error: sorry
  shown:
    say: "Found {found}."
    then: ask
"""

ACTIONS = """
import asyncio
from engine.actions import ActionFailed, action

calls = []
gates = {}


@action
async def create_order(ctx, items, qty, price, note=""):
    calls.append((ctx.key, ctx.attempt, ctx.contact, items, qty, price, note))
    gate = gates.get(ctx.contact)
    if gate is not None:
        await gate.wait()
    if qty > 5:
        raise ActionFailed("too many", "rejected")
    return {"id": "BP-" + str(len(calls)), "total": 12.25}


@action
async def lookup(ctx):
    await asyncio.Event().wait()  # never answers
"""


def write(folder: Path, flow: str = SHOP, actions: str | None = ACTIONS) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "shop.yaml").write_text(textwrap.dedent(flow).lstrip("\n"))
    if actions is not None:
        (folder / "actions.py").write_text(textwrap.dedent(actions).lstrip("\n"))
    return folder


class Shop(timers.Shop):
    """The timers tests' shop, with the actions module's record of calls at hand."""

    def __init__(self, engine: Engine, sender: Recorder, clock: FakeClock) -> None:
        super().__init__(engine, sender, clock)
        create_order = engine.flows.actions.get("create_order")
        assert create_order is not None and create_order.fn is not None
        self.module: dict[str, Any] = create_order.fn.__globals__

    async def turn(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def until_called(self, n: int = 1) -> None:
        """Wait (in real time: the store's thread commits first) until `n` calls were made."""
        for _ in range(500):
            if len(self.module["calls"]) >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{n} call(s) expected, {len(self.module['calls'])} made")

    def texts(self, phone: str = "1") -> list[str]:
        return self.sender.texts(f"n:{phone}")


async def shop(
    opened: list[Any], folder: Path, store: Store | None = None, clock: FakeClock | None = None
) -> Shop:
    return await timers.shop(opened, folder, store, clock, kind=Shop)


# --- the result, errors, time --------------------------------------------------------------


async def test_the_result_fills_slots_as_numbers_and_the_flow_moves_on(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    assert await s.say("hi") == ["What would you like?"]
    assert await s.say("order") == ["Order BP-1: total 24.50.", "What would you like?"]
    [(key, attempt, contact, items, qty, price, note)] = s.module["calls"]
    assert (attempt, contact, items, qty, price, note) == (
        1,
        "n:1",
        ["pizza"],
        Decimal(2),
        Decimal("9.50"),
        "for 2",
    )
    assert len(key) == 32
    view = await s.engine.view("n:1", limit=0)
    assert view["slots"]["order"] == "BP-1"
    assert view["slots"]["total"] == "12.25"  # a Decimal in the snapshot, shown exactly
    assert s.engine.metrics.actions.values[("create_order", "done")] == 1


async def test_action_failed_takes_on_error_with_its_kind_and_message(
    tmp_path: Path, opened: list[Any]
) -> None:
    flow = SHOP.replace('set: {qty: "=2"}', 'set: {qty: "=7"}')
    s = await shop(opened, write(tmp_path / "flows", flow))
    await s.say("hi")
    assert await s.say("order") == [
        "Could not place it (rejected: too many).",
        "What would you like?",
    ]
    assert s.engine.metrics.actions.values[("create_order", "rejected")] == 1


async def test_a_bug_in_an_action_is_logged_and_takes_on_error(
    tmp_path: Path, opened: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    broken = ACTIONS.replace('return {"id"', 'return 1 / 0 and {"id"')
    s = await shop(opened, write(tmp_path / "flows", actions=broken))
    await s.say("hi")
    with caplog.at_level(logging.ERROR):
        replies = await s.say("order")
    assert replies == ["Could not place it (error: ZeroDivisionError).", "What would you like?"]
    assert any("create_order" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    ("returns", "message"),
    [
        ("object()", "the result holds a object, which a slot cannot"),
        ('{"total": 1}', "the result has no field 'id'"),
        ('{"id": float("nan"), "total": 1}', "the result holds nan, which is not a number"),
    ],
)
async def test_a_result_a_slot_cannot_hold_takes_on_error(
    tmp_path: Path, opened: list[Any], returns: str, message: str
) -> None:
    odd = ACTIONS.replace(
        'return {"id": "BP-" + str(len(calls)), "total": 12.25}', f"return {returns}"
    )
    s = await shop(opened, write(tmp_path / "flows", actions=odd))
    await s.say("hi")
    assert await s.say("order") == [
        f"Could not place it (result: {message}).",
        "What would you like?",
    ]


async def test_a_call_that_outlasts_within_takes_on_error_timeout(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi")
    await s.send("look")
    await s.turn()
    assert s.engine.calls.in_flight == 1
    await s.clock.advance(2.9)
    await s.turn()
    assert s.texts() == ["What would you like?"]
    await s.clock.advance(0.2)
    await s.settle()
    assert s.texts()[1:] == [
        "Could not place it (timeout: no answer within 3s).",
        "What would you like?",
    ]
    assert s.engine.calls.in_flight == 0


async def test_a_plain_function_runs_in_a_thread(tmp_path: Path, opened: list[Any]) -> None:
    plain = """
    import threading
    from engine.actions import action

    @action
    def create_order(items, qty, price, note=""):
        return {"id": threading.current_thread().name, "total": 1}

    @action
    def lookup():
        return "x"
    """
    s = await shop(opened, write(tmp_path / "flows", actions=plain))
    await s.say("hi")
    [placed, _ask] = await s.say("order")
    assert threading.current_thread().name not in placed
    assert placed.startswith("Order ")


# --- the actor: others proceed, later mail waits in order -----------------------------------


async def test_other_contacts_proceed_while_one_waits_and_its_later_messages_wait_in_order(
    tmp_path: Path, opened: list[Any]
) -> None:
    s = await shop(opened, write(tmp_path / "flows"))
    await s.say("hi", "1")
    gate = asyncio.Event()
    s.module["gates"]["n:1"] = gate
    await s.send("order", "1")
    await s.until_called()
    await s.send("hello?", "1")  # waits behind the call
    await s.send("order", "1")
    await s.send("hi", "2")  # another contact is answered meanwhile
    for _ in range(200):
        if s.texts("2"):
            break
        await asyncio.sleep(0.01)
    assert s.texts("2") == ["What would you like?"]
    assert s.texts("1") == ["What would you like?"]
    gate.set()
    await s.settle()
    assert s.texts("1") == [
        "What would you like?",
        "Order BP-1: total 24.50.",
        "What would you like?",
        "Say order.",  # "hello?" was handled after the call, not before
        "Order BP-2: total 24.50.",
        "What would you like?",
    ]
    keys = [c[0] for c in s.module["calls"]]
    assert len(set(keys)) == 2  # each call has its own key


# --- crashes and restarts -------------------------------------------------------------------


async def stopped_mid_call(tmp_path: Path) -> tuple[Shop, Path, FakeClock]:
    """An engine on an SQLite file, stopped while contact 1's create_order call is in flight
    (its gate is never set); returns it, its flows folder and its clock."""
    folder = write(tmp_path / "flows")
    clock = FakeClock()
    store = SqliteStore(tmp_path / "engine.sqlite3")
    await store.open()
    s = await shop([], folder, store, clock)
    await s.say("hi")
    s.module["gates"]["n:1"] = asyncio.Event()
    await s.send("order")
    await s.until_called()
    await s.engine.close()
    await store.close()
    return s, folder, clock


async def restarted(tmp_path: Path, opened: list[Any], folder: Path, clock: FakeClock) -> Shop:
    store = SqliteStore(tmp_path / "engine.sqlite3")
    await store.open()
    opened.append(store.close)
    return await shop(opened, folder, store, clock)


async def test_a_call_lost_in_a_restart_is_made_again_with_the_same_key(
    tmp_path: Path, opened: list[Any]
) -> None:
    s, folder, clock = await stopped_mid_call(tmp_path)
    [(key, attempt, *_)] = s.module["calls"]
    assert attempt == 1
    again = await restarted(tmp_path, opened, folder, clock)
    await again.turn()
    assert again.module["calls"] == []  # not before its time runs out...
    await clock.advance(10 + 5)  # within: (default 10s) and the grace
    await again.settle()
    [(key2, attempt2, *_)] = again.module["calls"]
    assert (key2, attempt2) == (key, 2)
    assert again.texts() == ["Order BP-1: total 24.50.", "What would you like?"]
    assert again.engine.metrics.timers.values[("action", "fired")] == 1


async def test_a_customer_message_after_a_restart_waits_for_the_call_made_again(
    tmp_path: Path, opened: list[Any]
) -> None:
    s, folder, clock = await stopped_mid_call(tmp_path)
    again = await restarted(tmp_path, opened, folder, clock)
    again.n = s.n
    assert await again.say("what now?") == [
        "Order BP-1: total 24.50.",
        "What would you like?",
        "Say order.",
    ]
    assert [c[1] for c in again.module["calls"]] == [2]


async def test_a_flow_that_no_longer_calls_voids_the_recorded_call(
    tmp_path: Path, opened: list[Any]
) -> None:
    s, folder, clock = await stopped_mid_call(tmp_path)
    changed = SHOP.replace(
        """  place:
    action: create_order
    with: {items: [pizza], qty: "=qty", price: "=9.50", note: "for {qty}"}
    save: {order: id, total: total}
    on_done: placed
    on_error: sorry""",
        """  place:
    say: "We take orders by phone."
    then: ask
  place_later:
    action: create_order
    with: {items: [pizza], qty: "=qty", price: "=9.50"}
    save: {order: id, total: total}
    on_done: placed
    on_error: sorry""",
    ).replace(
        "      - text: look\n", "      - text: later\n        go: place_later\n      - text: look\n"
    )
    assert "go: place_later" in changed
    write(folder, changed)
    again = await restarted(tmp_path, opened, folder, clock)
    again.n = s.n
    await clock.advance(60)
    await again.settle()
    assert again.module["calls"] == []
    # The step it was at only moves on by itself: the message meets the flow from its start.
    assert await again.say("what now?") == ["What would you like?", "Say order."]
    assert (await again.engine.view("n:1", limit=0))["state"] == "ask"


# --- the validator --------------------------------------------------------------------------


def problems(folder: Path) -> list[tuple[str, int, str]]:
    return [(Path(p.file).name, p.line, p.message) for p in validate_path(folder)]


def test_the_shop_is_valid(tmp_path: Path) -> None:
    assert problems(write(tmp_path / "flows")) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "action: lookup",
            "action: lokup",
            (
                "shop.yaml",
                26,
                "unknown action 'lokup' (did you mean 'lookup'?) (known: create_order, http,"
                " lookup; yours go in actions.py beside the flows)",
            ),
        ),
        (
            'with: {items: [pizza], qty: "=qty",',
            'with: {items: [pizza], qtty: "=qty",',
            ("shop.yaml", 14, "action 'create_order' needs qty in with:"),
        ),
        (
            'note: "for {qty}"}',
            'note: "for {qty}", colour: red}',
            (
                "shop.yaml",
                14,
                "action 'create_order' has no parameter 'colour' (it takes items, note, price,"
                " qty)",
            ),
        ),
        (
            "    on_error: sorry\n  placed:",
            "  placed:",
            ("shop.yaml", 14, "action: needs on_error: (where to go when the call fails)"),
        ),
        (
            "    within: 3s",
            "    within: 10m",
            ("shop.yaml", 27, "within: from 1s to 300s"),
        ),
        (
            "save: {order: id, total: total}",
            "save: {order: 'id!', total: total}",
            ("shop.yaml", 16, "save: order: a field of the result, like id or order.id"),
        ),
        (
            "    on_done: shown",
            "    on_done: lookup",
            ("shop.yaml", 29, "loop lookup -> lookup never waits for the customer"),
        ),
        (
            '    say: "Found {found}."',
            '    say: "Found {found}."\n    on_done: ask',
            ("shop.yaml", 33, "on_done: belongs to a step with action:"),
        ),
    ],
)
def test_mistakes_in_action_steps_are_reported_at_their_line(
    tmp_path: Path, old: str, new: str, expected: tuple[str, int, str]
) -> None:
    assert old in SHOP
    assert expected in problems(write(tmp_path / "flows", SHOP.replace(old, new)))


def test_the_http_builtin_is_checked_without_a_provider(tmp_path: Path) -> None:
    flow = """
    start: a
    states:
      a:
        action: http
        with: {url: "ftp://shop.example/orders", method: FETCH}
        on_done: b
        on_error: b
      b:
        say: Done.
        end: true
    """
    found = problems(write(tmp_path / "flows", flow, actions=None))
    assert found == [
        (
            "shop.yaml",
            4,
            "action 'http': url 'ftp://shop.example/orders' must start with http:// or https://",
        ),
        ("shop.yaml", 4, "action 'http': method 'FETCH': use one of GET, POST, PUT, PATCH, DELETE"),
    ]
    ok = flow.replace("ftp://", "https://").replace("FETCH", "post")
    assert problems(write(tmp_path / "flows", ok, actions=None)) == []


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("x = 1\ndef broken(:\n", 2, "cannot import actions: SyntaxError"),
        ("import nothing_by_this_name\n", 1, "cannot import actions: ModuleNotFoundError"),
        (
            ACTIONS + "\n\n@action(name='lookup')\ndef other():\n    return 1\n",
            None,
            "action 'lookup' is defined twice",
        ),
        (
            ACTIONS + "\n\n@action\nasync def lookup(ctx):\n    return 2\n",
            None,
            "'lookup' is defined twice (first at line",
        ),
    ],
)
def test_mistakes_in_actions_py_are_reported_at_their_line(
    tmp_path: Path, source: str, line: int | None, message: str
) -> None:
    found = [p for p in problems(write(tmp_path / "flows", actions=source)) if p[0] == "actions.py"]
    assert len(found) == 1, found
    _name, at, text = found[0]
    assert text.startswith(message), text
    lines = textwrap.dedent(source).lstrip("\n").splitlines()  # as written()
    if line is None:  # the second definition: the decorator's line, or the def's
        line = next(i for i in range(len(lines), 0, -1) if lines[i - 1].startswith("@action"))
        assert at in (line, line + 1), (at, line)
    else:
        assert at == line


def test_an_actions_py_that_does_not_import_is_the_one_problem_named(tmp_path: Path) -> None:
    found = problems(write(tmp_path / "flows", actions="import nothing_by_this_name\n"))
    assert [p[0] for p in found] == ["actions.py"], found  # not also "unknown action ..."
