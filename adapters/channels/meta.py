"""Meta Cloud API webhooks: signature check and translation into engine events.

`parse` walks every entry, change and item of a POST body (Meta batches up to 1000 updates) and
returns the events it could read plus one `Malformed` note per item it could not. One bad item
never costs the others. Shapes follow Meta's webhook reference, including the 2026
business-scoped user ids (`user_id`, `from_user_id`) and payloads where `from`, `contacts` or
`metadata` are missing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.events import (
    Audio,
    ButtonReply,
    Contacts,
    Content,
    Customer,
    Document,
    Edit,
    ErrorDetail,
    Event,
    FlowReply,
    Image,
    ListReply,
    Location,
    Message,
    Order,
    OrderItem,
    OtherUpdate,
    ProviderErrors,
    Reaction,
    Revoke,
    SharedContact,
    StatusUpdate,
    Sticker,
    System,
    TemplateButton,
    Text,
    Unknown,
    Unsupported,
    Video,
    scrub,
)

from ..bodies import loads

Verdict = Literal["ok", "missing", "bad"]


_SIGNATURE = re.compile(r"[sS][hH][aA]256=([0-9a-fA-F]{64})")


def signature_digest(header: str | None) -> bytes | Verdict:
    """The digest `X-Hub-Signature-256: sha256=<64 hex>` announces, or why there is none. Checked
    before the body is read: a header of any other shape (other bytes included) is "bad"."""
    if not header:
        return "missing"
    found = _SIGNATURE.fullmatch(header.strip())
    return found.group(1).lower().encode("ascii") if found else "bad"


def verify_signature(secret: bytes, body: bytes | bytearray, header: str | None) -> Verdict:
    """Check `X-Hub-Signature-256` over the raw body, in constant time."""
    digest = signature_digest(header)
    if isinstance(digest, str):
        return digest
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode("ascii")
    return "ok" if hmac.compare_digest(digest, expected) else "bad"


def sign(secret: bytes, body: bytes) -> str:
    """The header value Meta would send for `body` (used by tests, the bench and the docs)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Malformed:
    where: str  # e.g. "entry[0].changes[1].messages[3]"
    reason: str


@dataclass(slots=True)
class Parsed:
    events: list[Event] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)


class _Bad(Exception):
    """An item that cannot be acted on; becomes a Malformed note."""


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_NUMBER_ID = re.compile(r"[0-9]{1,32}")  # Meta's phone_number_id: it also ends up in a URL path


def parse_body(body: bytes | bytearray) -> Parsed:
    """Parse a raw POST body. Invalid JSON is one Malformed note, never an exception; bytes that
    are not UTF-8 become U+FFFD, so they cost only the text that holds them."""
    try:
        try:
            doc = loads(body, parse_int=_int)
        except UnicodeDecodeError:
            doc = loads(bytes(body).decode("utf-8", "replace"), parse_int=_int)
    except (ValueError, RecursionError) as e:
        return Parsed(malformed=[Malformed("body", f"not JSON: {str(e)[:200]}")])
    if _SURROGATE_ESCAPE.search(body):  # emoji are escaped as surrogate pairs; a lone half may hide
        doc = _scrubbed(doc)
    return parse(doc)


def _int(digits: str) -> int | str:
    """A JSON integer; one too long for Python to convert (over 4,300 digits) stays the text it
    was, so it costs only the field that holds it (and nothing in a field nobody reads)."""
    try:
        return int(digits)
    except ValueError:
        return digits


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    if isinstance(value, dict):
        return {scrub(k): _scrubbed(v) for k, v in value.items()}
    return value


def parse(doc: Any) -> Parsed:
    out = Parsed()
    entries = doc.get("entry") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        out.malformed.append(Malformed("body", "no entry[] list"))
        return out
    for i, entry in enumerate(entries):
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            out.malformed.append(Malformed(f"entry[{i}]", "no changes[] list"))
            continue
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            try:
                _parse_change(change, where, out)
            except Exception as e:  # a shape nobody foresaw costs only its own change
                out.malformed.append(Malformed(where, f"unreadable change: {e!r}"))
    # A contact's messages of one batch are handled in their payload timestamp order.
    messages = sorted((e for e in out.events if isinstance(e, Message)), key=lambda m: m.timestamp)
    if messages:
        others = [e for e in out.events if not isinstance(e, Message)]
        out.events = [*messages, *others]
    return out


Builder = Callable[[dict[str, Any], str, Mapping[str, Any]], Event]


def _parse_change(change: Any, where: str, out: Parsed) -> None:
    if not isinstance(change, dict) or not isinstance(change.get("field"), str):
        out.malformed.append(Malformed(where, "change without a field name"))
        return
    value = change.get("value")
    if change["field"] != "messages":
        out.events.append(OtherUpdate(change["field"], value))
        return
    if not isinstance(value, dict):
        out.malformed.append(Malformed(where, "messages change without a value object"))
        return
    metadata = value.get("metadata")
    number = _str(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
    if number is not None and not _NUMBER_ID.fullmatch(number):
        out.malformed.append(Malformed(where, "metadata.phone_number_id is not a number id"))
        return
    if isinstance(value.get("errors"), list) and value["errors"]:
        out.events.append(ProviderErrors(number, _errors(value["errors"])))
    profiles = _profiles(value.get("contacts"))
    builders: list[tuple[str, Builder]] = [("messages", _message), ("statuses", _status)]
    for key, build in builders:
        items = value.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            out.malformed.append(Malformed(f"{where}.{key}", "not a list"))
        elif number is None:
            out.malformed.append(Malformed(where, f"{key} without metadata.phone_number_id"))
        else:
            _parse_items(
                items, build, number=number, profiles=profiles, where=f"{where}.{key}", out=out
            )


def _parse_items(
    items: list[Any],
    build: Builder,
    *,
    number: str,
    profiles: Mapping[str, Any],
    where: str,
    out: Parsed,
) -> None:
    for k, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise _Bad("not an object")
            out.events.append(build(item, number, profiles))
        except _Bad as e:
            out.malformed.append(Malformed(f"{where}[{k}]", str(e)))
        except Exception as e:
            out.malformed.append(Malformed(f"{where}[{k}]", f"unreadable item: {e!r}"))


def _profiles(contacts: Any) -> dict[str, dict[str, Any]]:
    """Map each wa_id and user_id in value.contacts to its contact object."""
    found: dict[str, dict[str, Any]] = {}
    if isinstance(contacts, list):
        for c in contacts:
            if isinstance(c, dict):
                for key in ("wa_id", "user_id"):
                    if isinstance(c.get(key), str):
                        found[c[key]] = c
    return found


def _message(item: dict[str, Any], number: str, profiles: Mapping[str, Any]) -> Message:
    msg_id = _str(item.get("id"))
    if not msg_id:
        raise _Bad("message without id")
    phone = _str(item.get("from"))
    user_id = _str(item.get("from_user_id"))
    contact = profiles.get(user_id or "") or profiles.get(phone or "") or {}
    user_id = user_id or _str(contact.get("user_id"))
    phone = phone or _str(contact.get("wa_id"))
    if not phone and not user_id:
        raise _Bad(f"message {msg_id} has neither from nor from_user_id")
    timestamp = _timestamp(item.get("timestamp"))
    if timestamp is None:
        raise _Bad(f"message {msg_id} has no valid timestamp")
    kind = _str(item.get("type")) or "unknown"
    profile = contact.get("profile")
    name = _str(profile.get("name")) if isinstance(profile, dict) else None
    context = item.get("context") if isinstance(item.get("context"), dict) else {}
    assert isinstance(context, dict)
    return Message(
        id=msg_id,
        timestamp=timestamp,
        customer=Customer(number=number, user_id=user_id, phone=phone, name=name),
        content=_content(kind, item),
        reply_to=_str(context.get("id")),
        forwarded=bool(context.get("forwarded") or context.get("frequently_forwarded")),
    )


def _content(kind: str, item: dict[str, Any]) -> Content:
    """The typed content of a message; a body that cannot be read becomes Unknown."""
    reader = _READERS.get(kind)
    body = item.get(kind)
    if reader is None:
        return Unknown(kind, item)
    try:
        return reader(body if isinstance(body, dict) else {}, item)
    except Exception:  # a body of an unexpected shape: still a message to answer
        return Unknown(kind, item)


def _media_fields(b: dict[str, Any]) -> dict[str, Any]:
    return {
        "media_id": _str(b.get("id")),
        "mime_type": _str(b.get("mime_type")),
        "sha256": _str(b.get("sha256")),
        "url": _str(b.get("url")),
    }


def _text(b: dict[str, Any], item: dict[str, Any]) -> Content:
    body = b["body"]
    if not isinstance(body, str):
        raise TypeError("text.body is not a string")
    return Text(body)


def _interactive(b: dict[str, Any], item: dict[str, Any]) -> Content:
    kind = b["type"]
    if kind == "button_reply":
        r = b["button_reply"]
        return ButtonReply(id=str(r["id"]), title=str(r.get("title", "")))
    if kind == "list_reply":
        r = b["list_reply"]
        return ListReply(
            id=str(r["id"]), title=str(r.get("title", "")), description=_str(r.get("description"))
        )
    if kind == "nfm_reply":
        r = b["nfm_reply"]
        raw = r.get("response_json") or "{}"
        response = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(response, dict):
            raise ValueError("nfm_reply.response_json is not an object")
        return FlowReply(response=response, body=_str(r.get("body")), name=_str(r.get("name")))
    raise ValueError(f"interactive type {kind!r}")


def _contacts(b: dict[str, Any], item: dict[str, Any]) -> Content:
    cards = []
    for c in item["contacts"]:
        if not isinstance(c, dict):
            continue
        name: dict[str, Any] = c["name"] if isinstance(c.get("name"), dict) else {}
        phones = [p for p in c.get("phones") or [] if isinstance(p, dict)]
        cards.append(
            SharedContact(
                name=str(name.get("formatted_name") or name.get("first_name") or ""),
                phones=tuple(str(p["phone"]) for p in phones if p.get("phone")),
                wa_ids=tuple(str(p["wa_id"]) for p in phones if p.get("wa_id")),
                emails=tuple(str(e["email"]) for e in c.get("emails") or [] if isinstance(e, dict)),
            )
        )
    return Contacts(tuple(cards))


def _order(b: dict[str, Any], item: dict[str, Any]) -> Content:
    items = tuple(
        OrderItem(
            product_id=str(p["product_retailer_id"]),
            quantity=int(p.get("quantity", 1)),
            price=float(p["item_price"]) if p.get("item_price") is not None else None,
            currency=_str(p.get("currency")),
        )
        for p in b.get("product_items") or []
    )
    return Order(catalog_id=_str(b.get("catalog_id")), text=_str(b.get("text")), items=items)


def _unsupported(b: dict[str, Any], item: dict[str, Any]) -> Content:
    errors = _errors(item.get("errors") or [])
    first = errors[0] if errors else None
    return Unsupported(
        type=_str(b.get("type")),
        error_code=first.code if first else None,
        error_title=first.title if first else None,
    )


def _edit(b: dict[str, Any], item: dict[str, Any]) -> Content:
    new = b.get("message")
    text = new.get("text") if isinstance(new, dict) else None
    body = text.get("body") if isinstance(text, dict) else None
    return Edit(original_id=str(b["original_message_id"]), body=_str(body))


_READERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Content]] = {
    "text": _text,
    "image": lambda b, i: Image(caption=_str(b.get("caption")), **_media_fields(b)),
    "audio": lambda b, i: Audio(voice=bool(b.get("voice", False)), **_media_fields(b)),
    "video": lambda b, i: Video(caption=_str(b.get("caption")), **_media_fields(b)),
    "document": lambda b, i: Document(
        caption=_str(b.get("caption")), filename=_str(b.get("filename")), **_media_fields(b)
    ),
    "sticker": lambda b, i: Sticker(animated=bool(b.get("animated", False)), **_media_fields(b)),
    "location": lambda b, i: Location(
        latitude=float(b["latitude"]),
        longitude=float(b["longitude"]),
        name=_str(b.get("name")),
        address=_str(b.get("address")),
        url=_str(b.get("url")),
    ),
    "contacts": _contacts,
    "interactive": _interactive,
    "button": lambda b, i: TemplateButton(payload=str(b["payload"]), text=str(b.get("text", ""))),
    "reaction": lambda b, i: Reaction(message_id=str(b["message_id"]), emoji=_str(b.get("emoji"))),
    "order": _order,
    "system": lambda b, i: System(
        type=str(b.get("type") or "unknown"),
        body=_str(b.get("body")),
        new_phone=_str(b.get("wa_id")),
        new_user_id=_str(b.get("user_id")),
    ),
    "unsupported": _unsupported,
    "edit": _edit,
    "revoke": lambda b, i: Revoke(original_id=str(b["original_message_id"])),
}


def _status(item: dict[str, Any], number: str, profiles: Mapping[str, Any]) -> StatusUpdate:
    msg_id, status = _str(item.get("id")), _str(item.get("status"))
    if not msg_id or not status:
        raise _Bad("status without id or status")
    timestamp = _timestamp(item.get("timestamp") or 0)
    if timestamp is None:
        raise _Bad(f"status {status} for {msg_id} has an invalid timestamp")
    return StatusUpdate(
        id=msg_id,
        status=status,
        timestamp=timestamp,
        number=number,
        recipient=_str(item.get("recipient_id")),
        recipient_user_id=_str(item.get("recipient_user_id")),
        errors=_errors(item.get("errors") or []),
        callback_data=_str(item.get("biz_opaque_callback_data")),
    )


def _errors(items: Any) -> tuple[ErrorDetail, ...]:
    found = []
    for e in items if isinstance(items, list) else []:
        if not isinstance(e, dict):
            continue
        try:
            code = int(e.get("code"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            code = 0
        data = e.get("error_data") if isinstance(e.get("error_data"), dict) else {}
        assert isinstance(data, dict)
        found.append(
            ErrorDetail(
                code=code,
                title=str(e.get("title") or e.get("message") or ""),
                message=_str(e.get("message")),
                details=_str(data.get("details")),
            )
        )
    return tuple(found)


def _timestamp(value: Any) -> int | None:
    """Unix seconds as Meta sends them (a string); None when absent or absurd."""
    try:
        ts = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return ts if 0 <= ts < 10**11 else None


def _str(value: Any) -> str | None:
    if isinstance(value, str) and value != "":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
