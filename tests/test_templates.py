"""Approved templates and the 24-hour window: templates.yaml checked at file:line, every use of a
template checked against it, a message that leaves outside the window sent as its template (or
recorded as not sent), the provider's 131047 handled the same way, and the agent API's
templates."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from adapters.channels.console import render
from adapters.channels.whatsapp import template_body
from engine.conversation import OptOut
from engine.errors import OptedOut
from engine.flows import load_flows, validate_path
from engine.outbound import TemplateMessage, TextMessage, fit, from_json, to_json
from engine.ports import Outgoing
from tests.support import Recorder
from tests.test_timers import Shop, shop

TEMPLATES = """
cart_reminder:
  language: en_US
  category: marketing
  body: "Hi {{1}}, your cart of {{2}} items is saved."
  buttons:
    - quick_reply: Show my cart
    - url: "https://shop.example/cart/{{1}}"
order_update:
  language: en
  category: utility
  body: "Order {{number}} is {{status}}."
  header: document
welcome_back:
  language: pt_BR
  body: "Olá!"
  header: {text: "Hi {{1}}"}
"""


def folder(tmp_path: Path, flow: str, templates: str = TEMPLATES) -> Path:
    root = tmp_path / "flows"
    root.mkdir(exist_ok=True)
    (root / "templates.yaml").write_text(textwrap.dedent(templates).lstrip("\n"))
    (root / "shop.yaml").write_text(textwrap.dedent(flow).lstrip("\n"))
    return root


def problems(root: Path) -> list[str]:
    return [f"{Path(p.file).name}:{p.line}: {p.message}" for p in validate_path(root)]


REMINDER = """
start: cart
slots: {items: "3"}
states:
  cart:
    say: "What would you like?"
    on:
      - kind: any
        go: cart
    timeout:
      - after: 30m
        say:
          text: "Still there, {name}?"
          template: {name: cart_reminder, params: ["{name}", "{items}"], buttons: ["c-{items}"]}
      - after: 25h
        say:
          text: "Your cart of {items} is still saved, {name}."
          template: {name: cart_reminder, params: ["{name}", "{items}"], buttons: ["c-{items}"]}
      - after: 26h
        say: "Nothing to fall back on."
"""


# --- templates.yaml and the uses of a template ------------------------------------------------


def test_templates_yaml_is_not_a_flow_and_is_checked_at_file_line(tmp_path: Path) -> None:
    """Every mistake in templates.yaml is reported at its line; a valid file reads back whole."""
    bad = """
    Cart-Reminder:
      language: english
      body: "Hi {{1}} and {{3}}"
    mixed:
      language: en
      body: "Hi {{1}}, {{name}}"
    media:
      language: en
      body: "x"
      header: gif
      buttons:
        - url: "https://x/{{1}}/y"
        - call: "+1"
      colour: red
    sid:
      language: en
      body: "y"
      twilio_content_sid: HX12
    """
    root = folder(tmp_path, "start: a\nstates:\n  a:\n    say: hi\n    end: true\n", bad)
    found = problems(root)
    assert found == [
        "templates.yaml:1: template name 'Cart-Reminder': lower case letters, digits and '_' "
        "(as at Meta)",
        "templates.yaml:2: language 'english': a code like en, en_US or pt_BR",
        "templates.yaml:3: template Cart-Reminder body: positional parameters must be {{1}} to "
        "{{2}}",
        "templates.yaml:6: template mixed body: use {{1}}-style or {{name}}-style parameters, "
        "not both",
        "templates.yaml:10: header: one of image, video, document, or {text: ...}",
        "templates.yaml:12: a url button takes one value, {{1}}, at the end of the URL",
        "templates.yaml:13: a button is {quick_reply: title} or {url: 'https://...'}",
        "templates.yaml:14: unknown key 'colour' in template media",
        "templates.yaml:18: twilio_content_sid: HX and 32 hex digits",
    ]
    good = folder(tmp_path, "start: a\nstates:\n  a:\n    say: hi\n    end: true\n")
    assert problems(good) == []
    flows = load_flows(good, "shop")
    assert sorted(flows.by_name) == ["shop"]  # templates.yaml is not a flow
    assert flows.templates["cart_reminder"].params == ("1", "2")
    assert flows.templates["order_update"].named and flows.templates["order_update"].header


USES = [
    (
        "template: {name: cart_remindr, params: [a, b], buttons: [c]}",
        "'cart_remindr' is not in templates.yaml (did you mean 'cart_reminder'?)",
    ),
    ("template: {name: cart_reminder, params: [a], buttons: [c]}", "takes 2 values, 1 given"),
    ("template: {name: cart_reminder, params: {first: a}, buttons: [c]}", "takes 2 positional"),
    ("template: {name: cart_reminder, params: [a, b]}", "1 button(s) that take a value, 0 given"),
    ("template: {name: order_update, params: {number: '1'}, header: x}", "missing status"),
    (
        "template: {name: order_update, params: {number: '1', status: s, extra: e}, header: x}",
        "unknown extra",
    ),
    (
        "template: {name: order_update, params: {number: '1', status: s}}",
        "document header: give header: (a link or media id)",
    ),
    ("template: {name: welcome_back}", "text header: give header: (its value)"),
    (
        "template: {name: cart_reminder, params: ['{nope}', b], buttons: [c]}",
        "unknown placeholder {nope}",
    ),
    (
        "template: {name: cart_reminder, params: [a, b], buttons: [c], colour: red}",
        "unknown key 'colour' in template",
    ),
]


@pytest.mark.parametrize(("use", "expected"), USES)
def test_each_use_of_a_template_is_checked_against_templates_yaml(
    tmp_path: Path, use: str, expected: str
) -> None:
    """A use Meta would refuse (132000: wrong count, a missing name) fails `flows validate`."""
    flow = f"""
    start: a
    states:
      a:
        say:
          text: Hello
          {use}
        end: true
    """
    found = problems(folder(tmp_path, flow))
    assert len(found) == 1 and found[0].startswith("shop.yaml:6: "), found
    assert expected in found[0], found


def test_a_flow_without_templates_yaml_names_the_file_it_needs(tmp_path: Path) -> None:
    root = tmp_path / "flows"
    root.mkdir()
    (root / "shop.yaml").write_text(
        "start: a\nstates:\n  a:\n    say: {template: cart_reminder}\n    end: true\n"
    )
    assert problems(root) == [
        "shop.yaml:4: template 'cart_reminder' is not in templates.yaml (declared: none: add "
        "templates.yaml beside the flows)"
    ]


def test_validating_templates_yaml_alone_checks_only_it(tmp_path: Path) -> None:
    root = folder(tmp_path, "start: a\nstates: {}\n", "x:\n  body: hi\n")
    assert [str(p).split("/")[-1] for p in validate_path(root / "templates.yaml")] == [
        "templates.yaml:2: language: is required"
    ]


# --- the message ------------------------------------------------------------------------------


def test_a_template_round_trips_through_the_outbox_json() -> None:
    t = TemplateMessage(
        "order_update",
        "en",
        "Order 7 is packed.",
        named=(("number", "7"), ("status", "packed")),
        header=("document", "https://x.example/i.pdf"),
        buttons=(("quick_reply", 0, "ok"),),
        category="utility",
    )
    message = TextMessage("Order 7 is packed!", fallback=t)
    assert from_json(json.loads(json.dumps(to_json(message)))) == message
    assert from_json(to_json(t)) == t
    pieces = fit(TextMessage("word " * 2000, fallback=t)).messages
    assert len(pieces) == 3 and all(p.fallback is t for p in pieces)  # type: ignore[union-attr]


def test_the_graph_api_gets_components_for_each_kind_of_value() -> None:
    positional = TemplateMessage(
        "cart_reminder",
        "en_US",
        "Hi Ana",
        params=("Ana", "3"),
        buttons=(("quick_reply", 0, "show_my_cart"), ("url", 1, "c-3")),
    )
    assert template_body(positional) == {
        "name": "cart_reminder",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "3"}],
            },
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "0",
                "parameters": [{"type": "payload", "payload": "show_my_cart"}],
            },
            {
                "type": "button",
                "sub_type": "url",
                "index": "1",
                "parameters": [{"type": "text", "text": "c-3"}],
            },
        ],
    }
    named = TemplateMessage(
        "order_update",
        "en",
        "x",
        named=(("number", "7"),),
        header=("document", "https://files.example/inv/7.pdf?sig=1"),
    )
    assert template_body(named)["components"] == [
        {
            "type": "header",
            "parameters": [
                {
                    "type": "document",
                    "document": {
                        "link": "https://files.example/inv/7.pdf?sig=1",
                        "filename": "7.pdf",
                    },
                }
            ],
        },
        {"type": "body", "parameters": [{"type": "text", "parameter_name": "number", "text": "7"}]},
    ]
    by_id = TemplateMessage("t", "en", "x", header=("image", "1037543291543636"))
    assert template_body(by_id)["components"][0]["parameters"] == [
        {"type": "image", "image": {"id": "1037543291543636"}}
    ]
    assert template_body(TemplateMessage("hello_world", "en_US", "Hello")) == {
        "name": "hello_world",
        "language": {"code": "en_US"},
    }
    assert render(positional) == ["[template cart_reminder en_US] Hi Ana"]


def test_values_are_flattened_as_meta_requires(tmp_path: Path) -> None:
    """A value with a line break or a run of spaces is refused by Meta (132018): it is made one
    line; an empty value becomes a dash rather than a refused message."""
    flows = load_flows(
        folder(tmp_path, "start: a\nstates:\n  a:\n    say: hi\n    end: true\n"), "shop"
    )
    t = flows.templates["cart_reminder"].fill(["Ana\n\tMaria   B", ""], None, ["x"])
    assert t.params == ("Ana Maria B", "-")
    assert t.body == "Hi Ana Maria B, your cart of - items is saved."


# --- the window -------------------------------------------------------------------------------


def sent(s: Shop) -> list[Any]:
    return [o.message for o in s.sender.sent]


async def test_a_timer_after_a_day_of_silence_goes_as_its_template_and_nothing_free_form(
    tmp_path: Path, opened: list[Any]
) -> None:
    """Inside the window the text goes; after 24 hours only its template, with the values the
    flow filled in; a message with no fallback is recorded as not sent; the transcript says
    what went."""
    s = await shop(opened, folder(tmp_path, REMINDER))
    await s.say("hi")
    assert await s.wait(30 * 60) == ["Still there, Ana?"]
    late = await s.wait(25 * 3600 - 30 * 60)
    assert late == ["Hi Ana, your cart of 3 items is saved."]
    template = sent(s)[-1]
    assert isinstance(template, TemplateMessage)
    assert (template.name, template.params) == ("cart_reminder", ("Ana", "3"))
    assert template.buttons == (("quick_reply", 0, "show_my_cart"), ("url", 1, "c-3"))
    assert await s.wait(3600) == []
    assert [type(m).__name__ for m in sent(s)] == ["TextMessage", "TextMessage", "TemplateMessage"]
    view = await s.engine.view("n:1")
    tail = [(m["type"], m["status"], m["text"]) for m in view["messages"][-2:]]
    assert tail == [
        ("template", "accepted", "Hi Ana, your cart of 3 items is saved."),
        ("text", "failed", "Nothing to fall back on."),
    ]
    assert view["messages"][-1]["error"]["title"] == "outside the 24-hour window"
    assert s.engine.metrics.templates.get("window") == 1
    assert s.engine.metrics.not_sent.get("window") == 1


async def test_the_window_is_kept_in_the_snapshot_across_a_restart(
    tmp_path: Path, opened: list[Any]
) -> None:
    """An engine that restarts after 23 hours still knows when the customer last wrote."""
    from adapters.stores.sqlite import SqliteStore
    from tests.fakes.clock import FakeClock

    root = folder(tmp_path, REMINDER)
    clock = FakeClock()
    for hours in (0, 23):
        store = SqliteStore(tmp_path / "a.sqlite3")
        await store.open()
        s = await shop([], root, store=store, clock=FakeClock(now=clock.now() + hours * 3600))
        if hours == 0:
            await s.say("hi")
            await s.wait(30 * 60)
            await s.engine.close()
            await store.close()
    opened.extend([store.close, s.engine.close])
    assert await s.wait(2 * 3600) == ["Hi Ana, your cart of 3 items is saved."]
    assert isinstance(sent(s)[-1], TemplateMessage)


async def test_a_long_text_outside_the_window_sends_its_template_once(
    tmp_path: Path, opened: list[Any]
) -> None:
    flow = """
    start: wait
    slots: {long: ""}
    states:
      wait:
        say: "Reply any time."
        on:
          - kind: any
            set: {long: "= 'word ' * 2000"}
            go: wait
        timeout:
          - after: 25h
            say:
              text: "{long}"
              template: {name: welcome_back, header: "{name}"}
    """
    s = await shop(opened, folder(tmp_path, flow))
    await s.say("hi")
    assert await s.wait(25 * 3600) == ["Olá!"]
    template = sent(s)[-1]
    assert isinstance(template, TemplateMessage) and template.header == ("text", "Ana")


async def test_a_template_step_goes_as_a_template_even_inside_the_window(
    tmp_path: Path, opened: list[Any]
) -> None:
    flow = """
    start: a
    slots: {stage: packed}
    states:
      a:
        say:
          template:
            name: order_update
            params: {number: "7", status: "{stage}"}
            header: "https://files.example/7.pdf"
        end: true
    """
    s = await shop(opened, folder(tmp_path, flow))
    assert await s.say("packed") == ["Order 7 is packed."]
    template = sent(s)[-1]
    assert isinstance(template, TemplateMessage) and template.category == "utility"
    assert template.named == (("number", "7"), ("status", "packed"))


class StoppedMarketing(Recorder):
    """A sender whose provider says the customer stopped marketing messages, for templates
    that are not declared utility."""

    async def send(self, out: Outgoing) -> str:
        m = out.message
        if isinstance(m, TemplateMessage) and m.category != "utility":
            raise OptedOut("(131050) User stopped marketing messages", code=131050)
        return await super().send(out)


async def test_after_131050_the_engine_sends_that_customer_no_marketing_template(
    tmp_path: Path, opened: list[Any]
) -> None:
    """The provider's 131050 is recorded on the conversation (it survives restarts with the
    snapshot): the next marketing template to them is recorded as not sent, without asking
    the provider, while a utility template (an order update) still goes."""
    flow = """
    start: a
    slots: {stage: packed}
    states:
      a:
        say: "Hi"
        on:
          - text: promo
            say: {template: {name: cart_reminder, params: ["{name}", "2"], buttons: [x]}}
          - text: order
            say:
              template:
                name: order_update
                params: {number: "7", status: "{stage}"}
                header: "https://files.example/7.pdf"
    """
    s = await shop(opened, folder(tmp_path, flow), sender=StoppedMarketing())
    await s.say("hi")
    await s.say("promo")
    assert s.engine.metrics.opt_outs.get("stopped") == 1
    await s.engine.actors.wait_idle()
    snapshot = (await s.engine.store.conversation("n:1")).snapshot  # type: ignore[union-attr]
    assert snapshot["opted_out"] is True
    await s.say("promo")
    await s.say("order")
    view = await s.engine.view("n:1")
    outcomes = [
        (m["type"], m["status"], (m["error"] or {}).get("title"))
        for m in view["messages"]
        if m["direction"] == "out"
    ]
    assert outcomes[-3:] == [
        ("template", "failed", "(131050) User stopped marketing messages"),
        ("template", "failed", "the customer stopped marketing messages"),
        ("template", "accepted", None),
    ]
    assert s.engine.metrics.not_sent.get("opt_out") == 1


async def test_a_send_that_fails_later_outside_the_window_gets_its_template(
    tmp_path: Path, opened: list[Any]
) -> None:
    """Meta accepted the text, then its `failed` status says 131047: the template fallback goes
    after all, as a message of its own (once, however often the status comes). A failed
    status with 131050 records the opt-out like an answer would."""
    from engine.events import ErrorDetail, StatusUpdate

    flow = """
    start: a
    states:
      a:
        say:
          text: "Hello again"
          template: {name: cart_reminder, params: ["{name}", "1"], buttons: [x]}
        on:
          - kind: any
            go: a
    """
    s = await shop(opened, folder(tmp_path, flow))
    await s.say("hi")
    (first,) = s.sender.sent
    failed = StatusUpdate(
        f"wamid.{first.id}", "failed", 1, "n", errors=(ErrorDetail(131047, "Re-engagement"),)
    )
    for _ in range(2):
        await s.engine.ingest([failed])
        await s.settle()
    late = [o for o in s.sender.sent if isinstance(o.message, TemplateMessage)]
    assert [(o.id, o.message.name) for o in late] == [(f"{first.id}:late:0", "cart_reminder")]
    await s.say("again")
    second = s.sender.sent[-1]
    stopped = StatusUpdate(
        f"wamid.{second.id}", "failed", 2, "n", errors=(ErrorDetail(131050, "Stopped"),)
    )
    await s.engine.ingest([stopped])
    await s.settle()
    assert s.engine.metrics.opt_outs.get("stopped") == 1


async def test_an_opted_out_customer_gets_no_marketing_fallback(
    tmp_path: Path, opened: list[Any]
) -> None:
    flow = """
    start: a
    states:
      a:
        say: "Hi"
        on:
          - kind: any
            go: a
        timeout:
          - after: 25h
            say:
              text: "Still there?"
              template: {name: cart_reminder, params: ["{name}", "1"], buttons: [x]}
    """
    s = await shop(opened, folder(tmp_path, flow), sender=StoppedMarketing())
    await s.say("hi")
    s.engine.route("n:1", OptOut(None))
    await s.settle()
    assert await s.wait(25 * 3600) == []
    view = await s.engine.view("n:1")
    last = view["messages"][-1]
    assert (last["type"], last["status"]) == ("text", "failed")
    assert last["error"]["title"] == "outside the 24-hour window"


def test_template_checks_that_meta_would_otherwise_make(tmp_path: Path) -> None:
    bad = """
    empty:
      language: en
      body: " "
    brace:
      language: en
      body: "Hi {{1}"
    long:
      language: en
      body: "x"
      header: {text: "%s"}
      buttons:
        - quick_reply: This title is far too long for a button
        - url: "ftp://x.example/{{1}}"
    """ % ("h" * 61)
    root = folder(tmp_path, "start: a\nstates:\n  a:\n    say: hi\n    end: true\n", bad)
    assert [p.split(": ", 1)[1] for p in problems(root)] == [
        "template empty: body is empty",
        "template brace body: a stray brace (parameters are written {{1}} or {{name}})",
        "template long: a text header is at most 60 characters",
        "a quick_reply button's title is at most 25 characters",
        "a url button's URL starts with https://",
    ]
    use = """
    start: a
    states:
      a:
        say: {template: {name: order_update, params: {number: "1", status: s}, header: inv.pdf}}
        end: true
    """
    (found,) = problems(folder(tmp_path, use))
    assert "its document header is a link (https://...) or a media id (digits)" in found


def test_a_template_s_quick_replies_are_choices_of_its_step(tmp_path: Path) -> None:
    flow = """
    start: a
    states:
      a:
        say: {template: {name: cart_reminder, params: [x, "2"], buttons: [c]}}
        on:
          - choice: show_my_cart
            go: b
      b:
        say: "Your cart."
        end: true
    """
    assert problems(folder(tmp_path, flow)) == []


@pytest.mark.parametrize(
    ("say", "expected"),
    [
        ("{location: {latitude: '91', longitude: '2'}}", "latitude: decimal degrees"),
        ("{location: {latitude: '1', longitude: abc}}", "longitude: decimal degrees"),
        ("{react: abc}", "react: one emoji, not 'abc'"),
        ("{react: '👍👍'}", "react: one emoji"),
    ],
)
def test_constant_places_and_reactions_are_checked(tmp_path: Path, say: str, expected: str) -> None:
    root = folder(tmp_path, f"start: a\nstates:\n  a:\n    say: {say}\n    end: true\n")
    (found,) = problems(root)
    assert expected in found
    for fine in ("{react: '👍🏽'}", "{react: '🇮🇳'}", "{react: ''}"):
        ok = folder(tmp_path, f"start: a\nstates:\n  a:\n    say: {fine}\n    end: true\n")
        assert problems(ok) == [], fine
