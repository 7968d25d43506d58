"""Meta webhook bodies become typed events: every kind, every item, bad items noted not fatal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.channels.meta import parse, parse_body, sign, verify_signature
from engine.events import (
    Audio,
    ButtonReply,
    Contacts,
    Document,
    Edit,
    FlowReply,
    Image,
    ListReply,
    Location,
    Message,
    Order,
    OtherUpdate,
    ProviderErrors,
    Reaction,
    Revoke,
    StatusUpdate,
    Sticker,
    System,
    TemplateButton,
    Text,
    Unknown,
    Unsupported,
    Video,
    decode,
    encode,
)
from tests.support import payload

NUMBER = "106540352242922"


def only_message(name: str) -> Message:
    parsed = parse(payload(name))
    assert parsed.malformed == []
    messages = [e for e in parsed.events if isinstance(e, Message)]
    assert len(messages) == 1
    return messages[0]


def test_text_with_business_scoped_user_id() -> None:
    """A 2026 payload links the phone and the user id, and names the business number."""
    m = only_message("text")
    assert m.id == "wamid.TEXT1" and m.timestamp == 1749416383
    assert m.customer.number == NUMBER
    assert m.customer.phone == "16505551234"
    assert m.customer.user_id == "US.13491208655302741918"
    assert m.customer.name == "Sheena Nelson"
    assert m.content == Text("Does it come in another color?")
    assert m.answerable and m.text == "Does it come in another color?"


def test_classic_payload_without_user_id() -> None:
    """Older payloads have no user_id at all and still parse."""
    m = only_message("text_classic")
    assert m.customer.phone == "16505550000" and m.customer.user_id is None
    assert m.customer.name == "Old Shape"


def test_user_id_only_payload_without_phone() -> None:
    """A customer with a username may come with no `from` and no `wa_id`."""
    m = only_message("text_bsuid_only")
    assert m.customer.phone is None
    assert m.customer.user_id == "US.99887766554433221100"
    assert m.customer.name == "Private"


MEDIA: list[tuple[str, Any]] = [
    (
        "image",
        Image(
            media_id="1037543291543636",
            mime_type="image/jpeg",
            sha256="abc123=",
            caption="the broken part",
            url="https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1037543291543636",
        ),
    ),
    (
        "audio_voice",
        Audio(
            media_id="2234567890", mime_type="audio/ogg; codecs=opus", sha256="v0ice=", voice=True
        ),
    ),
    (
        "video",
        Video(media_id="3234567890", mime_type="video/mp4", sha256="vid=", caption="unboxing"),
    ),
    (
        "document",
        Document(
            media_id="4234567890",
            mime_type="application/pdf",
            sha256="doc=",
            caption="my invoice",
            filename="invoice-48213.pdf",
        ),
    ),
    (
        "sticker",
        Sticker(media_id="5234567890", mime_type="image/webp", sha256="stk=", animated=True),
    ),
]


@pytest.mark.parametrize(("name", "expected"), MEDIA, ids=[m[0] for m in MEDIA])
def test_media_kinds(name: str, expected: Any) -> None:
    """Each media kind keeps its id, type, hash and kind-specific fields."""
    assert only_message(name).content == expected


def test_locations() -> None:
    """A chosen place has name and address; a current-location share has only coordinates."""
    place = only_message("location").content
    assert place == Location(
        37.483307,
        -122.148981,
        "Pablo Morales",
        "1 Hacker Way, Menlo Park, CA 94025",
        "https://example.com",
    )
    here = only_message("location_current").content
    assert here == Location(-23.5505, -46.6333)


def test_shared_contacts() -> None:
    """Shared contact cards keep names, phones, WhatsApp ids and e-mails."""
    content = only_message("contacts").content
    assert isinstance(content, Contacts)
    (card,) = content.cards
    assert card.name == "Barbara J. Johnson"
    assert card.phones == ("+1 (940) 555-1234", "+1 (650) 555-1234")
    assert card.wa_ids == ("19405551234",)
    assert card.emails == ("bjohnson@example.com",)


def test_interactive_replies() -> None:
    """Button and list replies carry the id and title we sent, and the message they answer."""
    b = only_message("button_reply")
    assert b.content == ButtonReply("question", "Ask a question")
    assert b.reply_to == "wamid.OUT1" and b.text == "Ask a question"
    row = only_message("list_reply")
    assert row.content == ListReply("priority_express", "Express Shipping", "Next Day to 2 Days")


def test_flow_completion_parses_its_response_json() -> None:
    """A WhatsApp Flow reply's response_json string becomes a mapping."""
    content = only_message("flow_reply").content
    assert content == FlowReply(
        {"flow_token": "AQAAAAACS5FpgQ_cAAAAAD0QI3s.", "size": "L"}, "Sent", "flow"
    )


def test_template_quick_reply() -> None:
    m = only_message("template_button")
    assert m.content == TemplateButton("DELIVERY_RESCHEDULE", "Reschedule")
    assert m.reply_to == "wamid.OUT4"


def test_reactions_added_and_removed() -> None:
    """A removed reaction has no emoji; reactions never get an answer."""
    added = only_message("reaction")
    assert added.content == Reaction("wamid.OUT5", "\U0001f62e") and not added.answerable
    removed = only_message("reaction_removed")
    assert removed.content == Reaction("wamid.OUT5", None)


def test_order_items() -> None:
    """Order items are typed; a quantity sent as text becomes a number."""
    content = only_message("order").content
    assert isinstance(content, Order)
    assert content.catalog_id == "799123" and content.text == "please deliver tomorrow"
    assert [(i.product_id, i.quantity, i.price, i.currency) for i in content.items] == [
        ("cement-50kg", 100, 11.5, "USD"),
        ("sand-bag", 20, 4.2, "USD"),
    ]


def test_system_message_without_contacts() -> None:
    """A number change arrives without value.contacts and is silent."""
    m = only_message("system")
    assert m.content == System(
        "user_changed_number", "User A changed from 16505551234 to 16505559999", "16505559999"
    )
    assert m.customer.phone == "16505551234" and m.customer.name is None
    assert not m.answerable


def test_unsupported_edit_revoke_unknown() -> None:
    """Unsupported kinds keep their error; edits and revocations are silent; new types are kept."""
    assert only_message("unsupported").content == Unsupported(
        "poll_update", 131051, "Message type unknown"
    )
    assert only_message("unsupported").answerable  # a poll vote is the customer talking
    assert not only_message("unsupported_edit").answerable  # an edit is an edit, however it comes
    edit = only_message("edit")
    assert edit.content == Edit("wamid.TEXT1", "Does it come in blue?") and not edit.answerable
    assert only_message("revoke").content == Revoke("wamid.TEXT1")
    unknown = only_message("unknown_type").content
    assert isinstance(unknown, Unknown) and unknown.type == "hologram"
    assert unknown.raw["hologram"] == {"shape": "cube"}


def test_known_type_with_missing_body_becomes_unknown_and_errors_are_kept() -> None:
    """An interactive message without its interactive object is still a message to answer."""
    parsed = parse(payload("interactive_without_body"))
    (message,) = [e for e in parsed.events if isinstance(e, Message)]
    assert isinstance(message.content, Unknown) and message.content.type == "interactive"
    (errors,) = [e for e in parsed.events if isinstance(e, ProviderErrors)]
    assert errors.errors[0].code == 131000
    assert errors.errors[0].details == "Unsupported webhook payload"


@pytest.mark.parametrize("state", ["sent", "delivered", "read"])
def test_statuses(state: str) -> None:
    """Statuses report on our message id; BSUID-era statuses name the user id too."""
    (event,) = parse(payload(f"status_{state}")).events
    assert event == StatusUpdate(
        id="wamid.OUT1",
        status=state,
        timestamp={"sent": 1750030073, "delivered": 1750030074, "read": 1750030075}[state],
        number=NUMBER,
        recipient="16505551234",
        recipient_user_id="US.13491208655302741918",
    )


def test_failed_status_has_no_contacts_and_carries_the_error() -> None:
    (event,) = parse(payload("status_failed")).events
    assert isinstance(event, StatusUpdate) and event.status == "failed"
    assert event.errors[0].code == 131047
    assert "24 hours" in (event.errors[0].details or "")


def test_value_level_errors_and_other_fields() -> None:
    """Account errors are typed; other webhook fields are kept raw."""
    (errors,) = parse(payload("value_errors")).events
    assert isinstance(errors, ProviderErrors) and errors.number == NUMBER
    assert errors.errors[0].code == 130429
    (other,) = parse(payload("other_field")).events
    assert isinstance(other, OtherUpdate) and other.field == "message_template_status_update"
    assert other.value["event"] == "APPROVED"


def test_every_item_of_a_batch_over_entries_changes_and_numbers() -> None:
    """Nothing after the first item is dropped: 2 entries x 2 changes x 3 messages + statuses."""
    entries = []
    for e in range(2):
        changes = []
        for c in range(2):
            number = f"10000000000000{c}"
            value = {
                "messaging_product": "whatsapp",
                "metadata": {"phone_number_id": number},
                "contacts": [
                    {"wa_id": f"1555000{e}{c}{i}", "profile": {"name": f"C{i}"}} for i in range(3)
                ],
                "messages": [
                    {
                        "from": f"1555000{e}{c}{i}",
                        "id": f"wamid.{e}{c}{i}",
                        "timestamp": "1700000000",
                        "type": "text",
                        "text": {"body": f"m{e}{c}{i}"},
                    }
                    for i in range(3)
                ],
                "statuses": [
                    {"id": f"wamid.out{e}{c}", "status": "read", "timestamp": "1700000001"}
                ],
            }
            changes.append({"field": "messages", "value": value})
        entries.append({"id": f"W{e}", "changes": changes})
    parsed = parse({"object": "whatsapp_business_account", "entry": entries})
    messages = [ev for ev in parsed.events if isinstance(ev, Message)]
    statuses = [ev for ev in parsed.events if isinstance(ev, StatusUpdate)]
    assert len(messages) == 12 and len(statuses) == 4
    assert {m.customer.number for m in messages} == {"100000000000000", "100000000000001"}
    assert all(m.customer.name == f"C{m.id[-1]}" for m in messages)


def test_messages_of_a_batch_come_out_in_timestamp_order() -> None:
    """Within one batch, a contact's messages are handled in payload timestamp order."""
    doc = payload("text")
    first = doc["entry"][0]["changes"][0]["value"]["messages"][0]
    later = dict(first, id="wamid.LATER", timestamp="1749416999", text={"body": "second"})
    earlier = dict(first, id="wamid.EARLIER", timestamp="1749416000", text={"body": "first"})
    doc["entry"][0]["changes"][0]["value"]["messages"] = [later, earlier]
    ids = [e.id for e in parse(doc).events if isinstance(e, Message)]
    assert ids == ["wamid.EARLIER", "wamid.LATER"]


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"object": "x"}, "body"),
        ({"entry": [{"id": "W"}]}, "entry[0]"),
        ({"entry": [{"changes": ["nope"]}]}, "entry[0].changes[0]"),
        (
            {"entry": [{"changes": [{"field": "messages", "value": {"messages": [{"id": "x"}]}}]}]},
            "entry[0].changes[0]",
        ),
    ],
)
def test_unreadable_structure_is_noted_not_raised(doc: dict[str, Any], where: str) -> None:
    parsed = parse(doc)
    assert parsed.events == [] and parsed.malformed[0].where == where


def test_a_bad_item_costs_only_itself() -> None:
    """Items without id, sender or timestamp are noted; their neighbours still come through."""
    doc = payload("text")
    good = doc["entry"][0]["changes"][0]["value"]["messages"][0]
    doc["entry"][0]["changes"][0]["value"]["messages"] = [
        {"from": "1", "timestamp": "1", "type": "text", "text": {"body": "no id"}},
        "not an object",
        {"id": "wamid.NOFROM", "timestamp": "1", "type": "text"},
        dict(good, id="wamid.BADTS", timestamp="yesterday"),
        good,
    ]
    doc["entry"][0]["changes"][0]["value"]["statuses"] = [{"status": "read"}]
    parsed = parse(doc)
    assert [e.id for e in parsed.events if isinstance(e, Message)] == ["wamid.TEXT1"]
    assert len(parsed.malformed) == 5
    assert {m.where for m in parsed.malformed} >= {
        "entry[0].changes[0].messages[1]",
        "entry[0].changes[0].statuses[0]",
    }


def test_invalid_json_is_one_note() -> None:
    parsed = parse_body(b"{not json")
    assert parsed.events == [] and parsed.malformed[0].where == "body"


def test_every_payload_file_round_trips_through_the_journal_codec() -> None:
    """What the journal stores decodes to an equal event, for every kind."""
    from tests.support import PAYLOADS

    count = 0
    for path in sorted(PAYLOADS.glob("*.json")):
        for event in parse(json.loads(path.read_text())).events:
            if isinstance(event, Message):
                assert decode(json.loads(json.dumps(encode(event)))) == event, path.name
                count += 1
    assert count == 25  # every message fixture (the rest are statuses, errors, fields)


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        (None, "missing"),
        ("", "missing"),
        ("sha256=00", "bad"),
        ("sha1=<good>", "bad"),
        ("sha256=<good>", "ok"),
    ],
)
def test_signature_over_raw_bytes(header: str | None, verdict: str) -> None:
    """The HMAC is taken over the exact bytes, with the app secret, in constant time."""
    body = b'{"text": "caf\\u00e9"}'
    good = sign(b"secret", body).removeprefix("sha256=")
    given = header.replace("<good>", good) if header else header
    assert verify_signature(b"secret", body, given) == verdict
    # Re-serialising the JSON changes the bytes, so it must not verify.
    assert (
        verify_signature(
            b"secret",
            json.dumps(json.loads(body), ensure_ascii=False).encode(),
            sign(b"secret", body),
        )
        == "bad"
    )
