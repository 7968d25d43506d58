"""Compiled flows behave as the designer wrote them, on one shared machine instance."""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statemachine.io import create_machine_class_from_definition

from engine.events import ButtonReply, Content, Customer, Image, ListReply, Location, Message, Text
from engine.flows import Flow
from engine.flows.machine import refuse_async
from engine.flows.reader import read_flow
from engine.flows.text import normalize
from engine.outbound import (
    MAX_PARTS,
    ButtonsMessage,
    ListMessage,
    TextMessage,
    fit,
    split_text,
)


@dataclass
class Convo:
    state: str | None = None
    slots: dict[str, str] = field(default_factory=dict)
    misses: int = 0
    name: str | None = "Ana"
    phone: str | None = "15550001"


def compile_text(tmp: Path, text: str, name: str = "shop") -> Flow:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    spec, problems = read_flow(path)
    assert problems == [], problems
    assert spec is not None
    return Flow(spec)


def msg(content: Content | str) -> Message:
    body = Text(content) if isinstance(content, str) else content
    return Message("wamid.x", 1, Customer("n", phone="15550001", name="Ana"), body)


def bodies(effects_messages: list[object]) -> list[str]:
    return [m.body for m in effects_messages]  # type: ignore[attr-defined]


SHOP = """
start: welcome
slots: {size: medium}
anywhere:
  - keywords: [agent, human]
    go: human
otherwise:
  - say: "Sorry, {name|friend}?"
    repeat: true
  - say: "Last chance."
  - say: "Getting a person."
    go: human
states:
  welcome:
    say:
      text: "Hi {name|there}! Pizza?"
      buttons:
        - {id: yes, title: "Yes please"}
        - {id: no, title: "No"}
    then: menu
  menu:
    on:
      - choice: yes
        go: size
      - choice: no
        say: "Maybe later then."
        go: bye
      - text: [menu]
        go: welcome
  size:
    say:
      text: "Which size? (now {size})"
      list:
        button: Sizes
        rows:
          - {id: s, title: Small}
          - {id: l, title: Large, description: "Feeds {size} people"}
    on:
      - choice: [s, l]
        set: {size: "{text}"}
        go: where
      - regex: "(?P<count>[0-9]+) people"
        say: "For {count}, take the large."
    otherwise:
      - "Pick a size from the list."
  where:
    say: "Send your location, or type your zip code."
    on:
      - kind: location
        save: place
        go: done
      - regex: "^(?P<zip>[0-9]{5})$"
        go: done
      - kind: media
        say: "Nice picture, but I need a location."
  done:
    say: "Order: {size} pizza to {place|you}. Zip: {zip|none}. Thanks {name}!"
    end: true
  human:
    say: "A person will answer you here."
    handoff: true
  bye:
    say: "Bye!"
    end: true
"""


def test_start_greets_and_follows_then(tmp_path: Path) -> None:
    """Starting enters the start state, says its messages and moves on through then:."""
    flow = compile_text(tmp_path, SHOP)
    c = Convo()
    effects = flow.start(c)
    assert c.state == "menu" and c.slots == {"size": "medium"}
    (greeting,) = effects.messages
    assert isinstance(greeting, ButtonsMessage) and greeting.body == "Hi Ana! Pizza?"
    assert [(b.id, b.title) for b in greeting.buttons] == [("yes", "Yes please"), ("no", "No")]


def test_choice_by_tap_or_by_typing_the_title(tmp_path: Path) -> None:
    """A tapped button id matches; so does typing the button's title, in any case."""
    flow = compile_text(tmp_path, SHOP)
    tapped, typed = Convo(), Convo()
    flow.start(tapped)
    flow.start(typed)
    flow.handle(tapped, msg(ButtonReply("yes", "Yes please")))
    flow.handle(typed, msg("  YES PLEASE!  "))
    assert tapped.state == typed.state == "size"


def test_list_choice_sets_slot_from_the_tapped_title(tmp_path: Path) -> None:
    flow = compile_text(tmp_path, SHOP)
    c = Convo(state="size")
    effects = flow.handle(c, msg(ListReply("l", "Large")))
    assert c.state == "where" and c.slots["size"] == "Large"
    assert bodies(effects.messages) == ["Send your location, or type your zip code."]


def test_list_rows_are_filled_from_slots(tmp_path: Path) -> None:
    flow = compile_text(tmp_path, SHOP)
    c = Convo()
    flow.start(c)
    effects = flow.handle(c, msg(ButtonReply("yes", "Yes please")))
    (menu,) = effects.messages
    assert isinstance(menu, ListMessage) and menu.body == "Which size? (now medium)"
    assert menu.sections[0].rows[1].description == "Feeds medium people"


def test_regex_groups_become_slots_and_branches_may_stay(tmp_path: Path) -> None:
    """A branch without go: answers and keeps the state (no re-entry, no re-prompt)."""
    flow = compile_text(tmp_path, SHOP)
    c = Convo(state="size")
    effects = flow.handle(c, msg("we are 12 people"))
    assert c.state == "size" and c.slots["count"] == "12"
    assert bodies(effects.messages) == ["For 12, take the large."]


def test_kinds_and_save(tmp_path: Path) -> None:
    """kind: branches match message kinds; save: keeps the text (a place's name)."""
    flow = compile_text(tmp_path, SHOP)
    c = Convo(state="where", slots={"size": "Large"})
    picture = flow.handle(c, msg(Image(media_id="1")))
    assert c.state == "where" and bodies(picture.messages) == [
        "Nice picture, but I need a location."
    ]
    done = flow.handle(c, msg(Location(1.0, 2.0, name="Quarry Road 12")))
    assert c.state == "done"
    assert bodies(done.messages) == ["Order: Large pizza to Quarry Road 12. Zip: none. Thanks Ana!"]


def test_template_defaults_fill_missing_values(tmp_path: Path) -> None:
    flow = compile_text(tmp_path, SHOP)
    c = Convo(state="where", slots={"size": "Small"}, name=None)
    effects = flow.handle(c, msg("10115"))
    assert bodies(effects.messages) == ["Order: Small pizza to you. Zip: 10115. Thanks !"]


def test_reprompt_ladder_is_counted_and_ends_in_its_target(tmp_path: Path) -> None:
    """Unexpected input climbs the ladder; repeat: re-shows the prompt (the buttons of welcome)."""
    flow = compile_text(tmp_path, SHOP)
    c = Convo()
    flow.start(c)
    first = flow.handle(c, msg("pineapple"))
    assert c.misses == 1 and c.state == "menu"
    assert bodies(first.messages) == ["Sorry, Ana?", "Hi Ana! Pizza?"] and first.reprompts == 1
    assert isinstance(first.messages[1], ButtonsMessage)
    second = flow.handle(c, msg("pineapple"))
    assert bodies(second.messages) == ["Last chance."] and c.misses == 2
    third = flow.handle(c, msg("pineapple"))
    assert c.state == "human" and third.handoff
    assert bodies(third.messages) == ["Getting a person.", "A person will answer you here."]


def test_state_ladder_overrides_the_flow_default_and_repeats_its_last_step(tmp_path: Path) -> None:
    flow = compile_text(tmp_path, SHOP)
    c = Convo(state="size")
    for _ in range(3):
        effects = flow.handle(c, msg("huge"))
        assert bodies(effects.messages) == ["Pick a size from the list."]
    assert c.state == "size" and c.misses == 3


def test_entering_a_state_resets_the_miss_count(tmp_path: Path) -> None:
    flow = compile_text(tmp_path, SHOP)
    c = Convo()
    flow.start(c)
    flow.handle(c, msg("pineapple"))
    flow.handle(c, msg("pineapple"))
    flow.handle(c, msg("menu"))
    assert c.state == "menu" and c.misses == 0


def test_anywhere_branches_apply_in_every_waiting_state(tmp_path: Path) -> None:
    flow = compile_text(tmp_path, SHOP)
    for state in ("menu", "size", "where"):
        c = Convo(state=state)
        effects = flow.handle(c, msg("can I talk to a human please"))
        assert c.state == "human" and effects.handoff, state


def test_end_and_handoff_states(tmp_path: Path) -> None:
    flow = compile_text(tmp_path, SHOP)
    c = Convo()
    flow.start(c)
    flow.handle(c, msg(ButtonReply("no", "No")))
    assert c.state == "bye" and flow.ends(c.state)
    assert not flow.ends("menu") and flow.ends(None) and flow.ends("a state that was removed")


def test_run_time_text_that_breaks_limits_is_split_or_shortened(tmp_path: Path) -> None:
    """Text filled from slots is split (text) or cut with an ellipsis (titles), never dropped."""
    flow = compile_text(
        tmp_path,
        """
        start: show
        slots: {long: "", title: ""}
        states:
          show:
            say:
              - "{long}"
              - text: "{long}"
                buttons: [{id: go, title: "{title}"}]
            on:
              - choice: go
                go: show
        """,
    )
    words = " ".join(f"word{i}" for i in range(1500))  # ~10k characters
    c = Convo(slots={"long": words, "title": "A much longer title than twenty"})
    c.state = None
    effects = flow._send("start", c, None, "_idle")
    texts = [m for m in effects.messages if isinstance(m, TextMessage)]
    buttons = [m for m in effects.messages if isinstance(m, ButtonsMessage)]
    assert all(len(m.body) <= 4096 for m in texts)
    pieces = len(split_text(words, 4096))
    assert pieces == 4
    assert " ".join(m.body for m in texts[:pieces]) == words  # the first text loses nothing
    assert len(buttons) == 1 and len(buttons[0].body) <= 1024
    assert (
        buttons[0].buttons[0].title == "A much longer title…"
        and len(buttons[0].buttons[0].title) == 20
    )
    # The button body's 10k characters would be 11 messages: MAX_PARTS, the last cut with "…".
    assert len(split_text(words, 1024)) > MAX_PARTS
    assert effects.split == (pieces - 1) + MAX_PARTS - 1
    assert effects.shortened == 2
    assert buttons[0].body.endswith("…")


def test_a_huge_value_becomes_a_few_messages_not_thousands() -> None:
    fitted = fit(TextMessage("x" * 50_000_000))
    assert len(fitted.messages) == MAX_PARTS and fitted.shortened == 1
    assert all(len(m.body) <= 4096 for m in fitted.messages)
    assert fitted.messages[-1].body.endswith("…")


def test_one_machine_instance_serves_every_conversation(tmp_path: Path) -> None:
    """Interleaved conversations keep their own states on the same live instance."""
    flow = compile_text(tmp_path, SHOP)
    convos = [Convo() for _ in range(50)]
    for c in convos:
        flow.start(c)
    for i, c in enumerate(convos):
        if i % 2:
            flow.handle(c, msg(ButtonReply("yes", "Yes please")))
    for i, c in enumerate(convos):
        assert c.state == ("size" if i % 2 else "menu")
    assert flow.live_instances == 1


def test_a_failing_step_leaves_no_half_used_instance(tmp_path: Path) -> None:
    """If a callback raises, the exception reaches the caller and the instance is rebuilt."""
    flow = compile_text(tmp_path, SHOP)

    class Exploding(dict[str, str]):
        def __setitem__(self, key: str, value: str) -> None:
            raise RuntimeError("disk full")

    c = Convo(state="size", slots=Exploding())
    with pytest.raises(RuntimeError, match="disk full"):
        flow.handle(c, msg(ListReply("l", "Large")))
    assert c.state == "size" and flow.live_instances == 0
    ok = Convo(state="size")
    flow.handle(ok, msg(ListReply("s", "Small")))
    assert ok.state == "where" and flow.live_instances == 1


# --- text a customer can send ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab _-!?.é\u00e0 \t1٣😀"), max_size=12))
def test_normalize_trims_what_is_not_a_letter_or_digit_at_both_ends(raw: str) -> None:
    """The same as the regex ^[\\W_]+|[\\W_]+$ it replaces, on every short text."""
    import re
    import unicodedata

    folded = " ".join(raw.casefold().split())
    if not folded.isascii():
        decomposed = unicodedata.normalize("NFKD", folded)
        folded = "".join(c for c in decomposed if not unicodedata.combining(c))
        folded = " ".join(folded.split())
    assert normalize(raw) == re.sub(r"^[\W_]+|[\W_]+$", "", folded)


def test_the_longest_text_whatsapp_delivers_is_answered_at_once(tmp_path: Path) -> None:
    """65,536 characters with a long run of punctuation inside: trimming it used to take time
    quadratic in the run (a customer could stall the whole process for minutes); now it is
    handled like any other message (the per-test timeout would catch a regression)."""
    flow = compile_text(tmp_path, SHOP)
    c = Convo()
    flow.start(c)
    effects = flow.handle(c, msg("x" + "!" * 65_534 + "x"))
    assert effects.messages  # the re-prompt
    effects = flow.handle(c, msg("I want a human" + "?" * 65_000))
    assert c.state == "human"


def test_a_regex_condition_looks_at_the_first_1024_characters(tmp_path: Path) -> None:
    """The README's own "(?P<people>[0-9]+) people" backtracks in time quadratic in a run of
    digits: 60,000 of them stalled the process for half a minute. Regexes see a window."""
    flow = compile_text(tmp_path, SHOP)
    c = Convo(state="size")
    flow.handle(c, msg("1" * 60_000))  # no match, at once (the per-test timeout would catch it)
    assert c.state == "size"
    effects = flow.handle(c, msg("for 12 people " + "." * 60_000))
    assert bodies(effects.messages) == ["For 12, take the large."]
    flow.handle(c, msg("." * 2000 + " we are 30 people"))  # beyond the window: not seen
    assert c.slots["count"] == "12"


def test_a_pattern_that_backtracks_exponentially_is_cut_short(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ "(a+)+$" against 40 a's and a b takes 2^40 steps even inside the window: the search has
    a time bound, counts as no match, and the step re-prompts (the per-test timeout would catch
    a regression)."""
    flow = compile_text(
        tmp_path,
        """
        start: ask
        states:
          ask:
            say: Say something.
            on:
              - regex: "^(a|aa)+$"
                say: All a's.
              - text: hi
                say: Hi.
        """,
    )
    c = Convo()
    flow.start(c)
    with caplog.at_level(logging.WARNING):
        effects = flow.handle(c, msg("a" * 60 + "b"))
    assert bodies(effects.messages)[0] == "Sorry, I didn't understand that."
    assert any("gave up after 50 ms" in r.getMessage() for r in caplog.records)
    assert bodies(flow.handle(c, msg("aaaa")).messages) == ["All a's."]
    assert bodies(flow.handle(c, msg("hi")).messages) == ["Hi."]


# --- values, conditions, computed slots ---------------------------------------------------------

PIZZA = """
start: menu
slots:
  cart: "= []"
  total: "= 0"
states:
  menu:
    say:
      text: "What would you like? ({= len(cart)} in your cart)"
      buttons: [{id: pizza, title: Pizza}, {id: cola, title: Cola}, {id: done, title: Done}]
    on:
      - choice: pizza
        set: {cart: "= cart + [{'name': 'Pizza', 'price': 9.50}]"}
        go: menu
      - choice: cola
        set: {cart: "= cart + [{'name': 'Cola', 'price': 2.00}]"}
        go: menu
      - choice: done
        when: "len(cart) == 0"
        say: "Your cart is empty."
      - choice: done
        set: {total: "= sum(cart, 'price')"}
        go:
          - when: "total >= 20"
            to: free
          - to: fee
  free:
    say: "Total {= money(total)}, free delivery!"
    end: true
  fee:
    set: {total: "= total + 4.90"}
    say: "Total {= money(total)} with delivery ({= len(cart)} items: {cart_names})."
    then: bye
  bye:
    set: {cart_names: "unused"}
    say: Bye!
    end: true
"""


def tap(flow: Flow, c: Convo, button_id: str) -> list[str]:
    return bodies(flow.handle(c, msg(ButtonReply(button_id, button_id.title()))).messages)


def test_a_cart_a_total_and_a_route_that_depends_on_it(tmp_path: Path) -> None:
    """Lists built with expressions, a sum in Decimal, when: on a branch, and go: by condition
    that sees what the branch's own set: just computed."""
    flow = compile_text(tmp_path, PIZZA.replace("{cart_names}", "{= text([i.name for i in cart])}"))
    c = Convo()
    assert bodies(flow.start(c).messages) == ["What would you like? (0 in your cart)"]
    assert tap(flow, c, "done") == ["Your cart is empty."]
    assert tap(flow, c, "pizza") == ["What would you like? (1 in your cart)"]
    tap(flow, c, "pizza")
    assert tap(flow, c, "done") == ["Total 23.90 with delivery (2 items: Pizza, Pizza).", "Bye!"]
    assert c.slots["total"] == Decimal("23.90") and c.state == "bye"

    c = Convo()
    flow.start(c)
    for _ in range(3):
        tap(flow, c, "pizza")
    assert tap(flow, c, "done") == ["Total 28.50, free delivery!"]
    assert c.state == "free"


def test_then_routes_by_condition_after_the_step_sets_its_slots(tmp_path: Path) -> None:
    flow = compile_text(
        tmp_path,
        """
        start: count
        slots: {n: "= 0"}
        states:
          count:
            say: "How many?"
            on:
              - regex: "(?P<raw>[0-9]+)"
                go: check
          check:
            set: {n: "= number(raw)"}
            then:
              - when: "n > 10"
                to: many
              - when: "n > 1"
                to: some
              - to: one
          many: {say: "A crowd of {n}.", end: true}
          some: {say: "{n} it is.", end: true}
          one: {say: "Just one.", end: true}
        """,
    )
    for typed, said in [
        ("we are 12", "A crowd of 12."),
        ("3 please", "3 it is."),
        ("1", "Just one."),
    ]:
        c = Convo()
        flow.start(c)
        assert bodies(flow.handle(c, msg(typed)).messages) == [said]


def test_save_keeps_a_whole_location_and_a_dropped_pin(tmp_path: Path) -> None:
    """A place keeps its coordinates, name and address; a pin with no name still has its
    coordinates (it used to save "")."""
    flow = compile_text(
        tmp_path,
        """
        start: where
        states:
          where:
            say: Where?
            on:
              - kind: location
                save: place
                say: "Got {place} ({= place.latitude}, {= place.longitude})."
        """,
    )
    c = Convo()
    flow.start(c)
    named = Location(52.3676, 4.9041, name="Dam Square", address="Dam 1")
    assert bodies(flow.handle(c, msg(named)).messages) == ["Got Dam Square (52.3676, 4.9041)."]
    assert c.slots["place"] == {
        "latitude": Decimal("52.3676"),
        "longitude": Decimal("4.9041"),
        "name": "Dam Square",
        "address": "Dam 1",
    }
    pin = Location(-33.8688, 151.2093)
    assert bodies(flow.handle(c, msg(pin)).messages) == [
        "Got -33.8688, 151.2093 (-33.8688, 151.2093)."
    ]


def test_a_machine_on_the_async_engine_is_refused() -> None:
    """One async callback would switch python-statemachine to its async engine, where the
    shared machine's send() returns a coroutine nobody awaits."""

    async def enter_async(*_args: object, **_kwargs: object) -> None:
        return None

    states = {
        "a": {"initial": True, "on": {"go": [{"target": "b"}]}},
        "b": {"enter": [enter_async]},
    }
    plain = {"a": {"initial": True, "on": {"go": [{"target": "b"}]}}, "b": {"final": True}}
    refuse_async(create_machine_class_from_definition("Plain", states=plain))
    with pytest.raises(TypeError, match="async engine"):
        refuse_async(
            create_machine_class_from_definition("Async", states=states, validate_trap_states=False)
        )


def test_an_expression_that_fails_at_run_time_is_empty_and_keeps_the_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A date where a number was expected: the message shows nothing there and the guard is
    false, both logged; the customer is not sent back to the start."""
    flow = compile_text(
        tmp_path,
        """
        start: ask
        states:
          ask:
            say: Your answer?
            on:
              - regex: "(?P<v>.+)"
                go: show
          show:
            say: "Twice: {= v * 2}."
            on:
              - when: "v * 2 > 3"
                say: Big.
              - text: again
                go: ask
        """,
    )
    c = Convo()
    flow.start(c)
    with caplog.at_level(logging.WARNING):
        assert bodies(flow.handle(c, msg("2026-12-24")).messages) == ["Twice: ."]
        assert c.state == "show"
        assert bodies(flow.handle(c, msg("anything")).messages)[0] == (
            "Sorry, I didn't understand that."
        )
    assert c.state == "show"
    logged = [r.getMessage() for r in caplog.records]
    assert any("'v * 2' could not be computed" in m and "taken as empty" in m for m in logged)
