"""Inbound events: what a provider told us, typed and provider-neutral.

A customer `Message` carries one content object per message kind (text, media, location,
interactive replies, reactions, orders, system notices, ...). `StatusUpdate` reports on a message
we sent, `ProviderErrors` on the account, and `OtherUpdate` keeps any other webhook field raw.
The journal stores messages through `encode` / `decode`, a versionless JSON shape keyed by kind.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar

JSON = dict[str, Any]
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """Replace lone UTF-16 surrogates (half of an emoji, cut off by a client) with U+FFFD:
    JSON can carry them, but no UTF-8 store can hold them."""
    return _SURROGATE.sub("\ufffd", text)


@dataclass(frozen=True, slots=True)
class Customer:
    """Who wrote, as seen by one business number (`number` is the Meta phone_number_id)."""

    number: str
    user_id: str | None = None  # business-scoped user id (BSUID), when the provider sends one
    phone: str | None = None  # digits as the provider gives them, no '+'
    name: str | None = None  # profile name


# --- content, one class per message kind -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    kind: ClassVar[str] = "text"
    body: str


@dataclass(frozen=True, slots=True)
class Image:
    kind: ClassVar[str] = "image"
    media_id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Audio:
    kind: ClassVar[str] = "audio"
    media_id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    voice: bool = False
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Video:
    kind: ClassVar[str] = "video"
    media_id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Document:
    kind: ClassVar[str] = "document"
    media_id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Sticker:
    kind: ClassVar[str] = "sticker"
    media_id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    animated: bool = False
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    kind: ClassVar[str] = "location"
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class SharedContact:
    name: str
    phones: tuple[str, ...] = ()
    wa_ids: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Contacts:
    kind: ClassVar[str] = "contacts"
    cards: tuple[SharedContact, ...]


@dataclass(frozen=True, slots=True)
class ButtonReply:
    """A tap on a reply button we sent."""

    kind: ClassVar[str] = "button_reply"
    id: str
    title: str


@dataclass(frozen=True, slots=True)
class ListReply:
    """A row chosen from a list message we sent."""

    kind: ClassVar[str] = "list_reply"
    id: str
    title: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class FlowReply:
    """A completed WhatsApp Flow (interactive nfm_reply)."""

    kind: ClassVar[str] = "flow_reply"
    response: JSON
    body: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateButton:
    """A tap on a quick-reply button of a template message."""

    kind: ClassVar[str] = "template_button"
    payload: str
    text: str


@dataclass(frozen=True, slots=True)
class Reaction:
    kind: ClassVar[str] = "reaction"
    message_id: str
    emoji: str | None  # None: the reaction was removed


@dataclass(frozen=True, slots=True)
class OrderItem:
    product_id: str
    quantity: int
    price: float | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Order:
    kind: ClassVar[str] = "order"
    catalog_id: str | None
    text: str | None
    items: tuple[OrderItem, ...]


@dataclass(frozen=True, slots=True)
class System:
    """A notice from WhatsApp itself, e.g. the customer changed number."""

    kind: ClassVar[str] = "system"
    type: str
    body: str | None = None
    new_phone: str | None = None
    new_user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A message kind the provider could not pass on (polls, view-once, ...)."""

    kind: ClassVar[str] = "unsupported"
    type: str | None
    error_code: int | None = None
    error_title: str | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    kind: ClassVar[str] = "edit"
    original_id: str
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Revoke:
    kind: ClassVar[str] = "revoke"
    original_id: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A kind this version does not know, or a known kind whose body could not be read."""

    kind: ClassVar[str] = "unknown"
    type: str
    raw: JSON


Content = (
    Text
    | Image
    | Audio
    | Video
    | Document
    | Sticker
    | Location
    | Contacts
    | ButtonReply
    | ListReply
    | FlowReply
    | TemplateButton
    | Reaction
    | Order
    | System
    | Unsupported
    | Edit
    | Revoke
    | Unknown
)

CONTENT_TYPES: dict[str, type[Content]] = {
    cls.kind: cls
    for cls in (
        Text,
        Image,
        Audio,
        Video,
        Document,
        Sticker,
        Location,
        Contacts,
        ButtonReply,
        ListReply,
        FlowReply,
        TemplateButton,
        Reaction,
        Order,
        System,
        Unsupported,
        Edit,
        Revoke,
        Unknown,
    )
}

# Kinds that tell us something happened but are not the customer talking to us.
SILENT_KINDS = frozenset({"reaction", "system", "edit", "revoke"})


@dataclass(frozen=True, slots=True)
class Message:
    """One message from a customer."""

    id: str
    timestamp: int
    customer: Customer
    content: Content
    reply_to: str | None = None  # the message it quotes or whose button it taps
    forwarded: bool = False

    @property
    def answerable(self) -> bool:
        """Whether the flow answers it (reactions, system notices, edits, deletions: never,
        also when WhatsApp passes them on as `unsupported` with that type)."""
        content = self.content
        if isinstance(content, Unsupported):
            return content.type not in SILENT_KINDS
        return content.kind not in SILENT_KINDS

    @property
    def text(self) -> str:
        """What the customer wrote or picked, as text: body, caption or tapped title."""
        return text_of(self.content)


def text_of(content: Content) -> str:
    if isinstance(content, Text):
        return content.body
    if isinstance(content, ButtonReply | ListReply):
        return content.title
    if isinstance(content, TemplateButton):
        return content.text
    if isinstance(content, Image | Video | Document):
        return content.caption or ""
    if isinstance(content, Location):
        return content.name or content.address or ""
    if isinstance(content, Order):
        return content.text or ""
    if isinstance(content, Edit):
        return content.body or ""
    if isinstance(content, FlowReply):
        return content.body or ""
    return ""


def choice_of(content: Content) -> str | None:
    """The id of a tapped button, list row or template quick reply."""
    if isinstance(content, ButtonReply | ListReply):
        return content.id
    if isinstance(content, TemplateButton):
        return content.payload
    return None


# --- other updates ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    code: int
    title: str
    message: str | None = None
    details: str | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What happened to a message we sent: sent, delivered, read, played or failed."""

    id: str
    status: str
    timestamp: int
    number: str
    recipient: str | None = None
    recipient_user_id: str | None = None
    errors: tuple[ErrorDetail, ...] = ()
    callback_data: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderErrors:
    """Errors about the account or app, not about one message."""

    number: str | None
    errors: tuple[ErrorDetail, ...]


@dataclass(frozen=True, slots=True)
class OtherUpdate:
    """Any other webhook field (template status, quality, account updates ...), kept raw."""

    field: str
    value: Any


Event = Message | StatusUpdate | ProviderErrors | OtherUpdate


# --- journal codec ---------------------------------------------------------------------------

_NESTED: dict[tuple[str, str], type[Any]] = {
    ("contacts", "cards"): SharedContact,
    ("order", "items"): OrderItem,
}


def encode(message: Message) -> JSON:
    """A JSON-ready dict that `decode` turns back into an equal Message."""
    content = message.content
    body = {f.name: _plain(getattr(content, f.name)) for f in dataclasses.fields(content)}
    return {
        "id": message.id,
        "ts": message.timestamp,
        "customer": dataclasses.asdict(message.customer),
        "kind": content.kind,
        "content": body,
        "reply_to": message.reply_to,
        "forwarded": message.forwarded,
    }


def decode(data: JSON) -> Message:
    kind = data["kind"]
    cls = CONTENT_TYPES.get(kind, Unknown)
    fields = dict(data["content"])
    if cls is Unknown and kind != "unknown":
        fields = {"type": kind, "raw": fields}
    for name, value in fields.items():
        nested = _NESTED.get((kind, name))
        if nested is not None:
            fields[name] = tuple(_rebuild(nested, item) for item in value)
    return Message(
        id=data["id"],
        timestamp=int(data["ts"]),
        customer=Customer(**data["customer"]),
        content=cls(**fields),
        reply_to=data.get("reply_to"),
        forwarded=bool(data.get("forwarded", False)),
    )


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _rebuild(cls: type[Any], data: JSON) -> Any:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
