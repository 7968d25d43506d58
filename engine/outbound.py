"""Outbound messages: what the engine says, provider-neutral, and WhatsApp's limits on it.

`fit` makes a message that was filled in at run time respect the limits: long text is split
into several messages (nothing is dropped), and titles that must stay short get an ellipsis.
The flow validator checks the same limits (`LIMITS`) on the static text of a flow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

LIMITS = {
    "text": 4096,
    "buttons": 3,
    "button_title": 20,
    "button_id": 256,
    "button_body": 1024,
    "list_body": 4096,
    "list_button": 20,
    "list_rows": 10,
    "list_sections": 10,
    "section_title": 24,
    "row_title": 24,
    "row_description": 72,
    "row_id": 200,
    "header": 60,
    "footer": 60,
    "caption": 1024,
    "location_name": 1000,
    "location_address": 1000,
}
ELLIPSIS = "…"
WINDOW = 24 * 3600.0  # WhatsApp's customer-service window, from the customer's last message
OUTSIDE_WINDOW = "outside the 24-hour window"


@dataclass(frozen=True, slots=True)
class Button:
    id: str
    title: str


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    title: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Section:
    title: str | None
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class TemplateMessage:
    """An approved template with its values filled in: the only kind WhatsApp delivers outside
    the 24-hour window. `body` is the approved text with the values in it, for transcripts and
    the console; the provider gets the name, the language and the values."""

    name: str
    language: str
    body: str
    params: tuple[str, ...] = ()  # positional body values ({{1}}, {{2}} ...)
    named: tuple[tuple[str, str], ...] = ()  # named body values ({{first_name}} ...)
    header: tuple[str, str] | None = None  # (text | image | video | document, value)
    buttons: tuple[tuple[str, int, str], ...] = ()  # (quick_reply | url, index, payload/suffix)
    content_sid: str | None = None  # the same template on Twilio (its Content API sid)
    category: str | None = None  # marketing | utility | authentication (None: marketing)


@dataclass(frozen=True, slots=True)
class TextMessage:
    body: str
    fallback: TemplateMessage | None = None  # what goes instead outside the 24-hour window


@dataclass(frozen=True, slots=True)
class ButtonsMessage:
    body: str
    buttons: tuple[Button, ...]
    header: str | None = None
    footer: str | None = None
    fallback: TemplateMessage | None = None


@dataclass(frozen=True, slots=True)
class ListMessage:
    body: str
    button: str
    sections: tuple[Section, ...]
    header: str | None = None
    footer: str | None = None
    fallback: TemplateMessage | None = None


MEDIA_KINDS = ("image", "document", "video", "audio")


@dataclass(frozen=True, slots=True)
class MediaMessage:
    """An image, document, video or audio: by `link` (https), by a media id the provider
    already holds, or by a `file` in the media folder that the sender uploads first."""

    kind: str  # image | document | video | audio
    link: str | None = None
    media_id: str | None = None
    file: str | None = None  # a path inside MEDIA_DIR
    caption: str | None = None
    filename: str | None = None  # what a document is called on the customer's phone
    fallback: TemplateMessage | None = None

    @property
    def body(self) -> str:
        shown = self.filename or self.file or self.link or self.media_id or ""
        return f"[{self.kind}: {shown}]" + (f" {self.caption}" if self.caption else "")


# WhatsApp's size limits per kind (whatsapp.md §1.4): a larger file is refused before upload.
MEDIA_LIMITS = {
    "image": 5 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
}


def media_path(root: Path, name: str, kind: str) -> Path:
    """The file `name` inside the media folder `root`; ValueError when it is not a plain file
    in there (a flow may build the name from what a customer wrote: `../../etc/passwd`, an
    absolute path or a link out of the folder never reach the provider) or is too large."""
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or path == base:
        raise ValueError("not a file inside MEDIA_DIR")
    if not path.is_file():
        raise ValueError("no such file in MEDIA_DIR")
    size = path.stat().st_size
    if size > MEDIA_LIMITS.get(kind, MEDIA_LIMITS["document"]):
        raise ValueError(f"{size} bytes: WhatsApp takes at most {MEDIA_LIMITS[kind]} for {kind}")
    return path


@dataclass(frozen=True, slots=True)
class LocationMessage:
    latitude: str  # decimal degrees, as text: exact
    longitude: str
    name: str | None = None
    address: str | None = None
    fallback: TemplateMessage | None = None

    @property
    def body(self) -> str:
        place = ", ".join(p for p in (self.name, self.address) if p)
        return f"[location {self.latitude},{self.longitude}]" + (f" {place}" if place else "")


@dataclass(frozen=True, slots=True)
class ReactionMessage:
    """An emoji on one of the customer's messages (empty: take a reaction back)."""

    message_id: str
    emoji: str
    fallback: TemplateMessage | None = None

    @property
    def body(self) -> str:
        return f"[reaction {self.emoji}]"


FreeForm = (
    TextMessage | ButtonsMessage | ListMessage | MediaMessage | LocationMessage | ReactionMessage
)
OutMessage = FreeForm | TemplateMessage


def kind_of(message: OutMessage) -> str:
    if isinstance(message, TextMessage):
        return "text"
    if isinstance(message, TemplateMessage):
        return "template"
    if isinstance(message, MediaMessage):
        return message.kind
    if isinstance(message, LocationMessage):
        return "location"
    if isinstance(message, ReactionMessage):
        return "reaction"
    return "buttons" if isinstance(message, ButtonsMessage) else "list"


def preview(message: OutMessage) -> str:
    """The text a person reads in a transcript."""
    return message.body


def to_json(message: OutMessage) -> dict[str, Any]:
    if isinstance(message, TemplateMessage):
        return {
            "type": "template",
            "name": message.name,
            "language": message.language,
            "body": message.body,
            "params": list(message.params),
            "named": [list(p) for p in message.named],
            "header": list(message.header) if message.header else None,
            "buttons": [list(b) for b in message.buttons],
            "content_sid": message.content_sid,
            "category": message.category,
        }
    data = _free_json(message)
    if message.fallback is not None:
        data["fallback"] = to_json(message.fallback)
    return data


def _free_json(message: FreeForm) -> dict[str, Any]:
    if isinstance(message, TextMessage):
        return {"type": "text", "body": message.body}
    if isinstance(message, MediaMessage):
        return {
            "type": "media",
            "kind": message.kind,
            "link": message.link,
            "id": message.media_id,
            "file": message.file,
            "caption": message.caption,
            "filename": message.filename,
        }
    if isinstance(message, LocationMessage):
        return {
            "type": "location",
            "latitude": message.latitude,
            "longitude": message.longitude,
            "name": message.name,
            "address": message.address,
        }
    if isinstance(message, ReactionMessage):
        return {"type": "reaction", "message_id": message.message_id, "emoji": message.emoji}
    if isinstance(message, ButtonsMessage):
        return {
            "type": "buttons",
            "body": message.body,
            "buttons": [{"id": b.id, "title": b.title} for b in message.buttons],
            "header": message.header,
            "footer": message.footer,
        }
    return {
        "type": "list",
        "body": message.body,
        "button": message.button,
        "sections": [
            {
                "title": s.title,
                "rows": [
                    {"id": r.id, "title": r.title, "description": r.description} for r in s.rows
                ],
            }
            for s in message.sections
        ],
        "header": message.header,
        "footer": message.footer,
    }


def from_json(data: dict[str, Any]) -> OutMessage:
    kind = data["type"]
    if kind == "template":
        header = data.get("header")
        return TemplateMessage(
            name=str(data["name"]),
            language=str(data["language"]),
            body=str(data.get("body") or ""),
            params=tuple(str(p) for p in data.get("params") or ()),
            named=tuple((str(k), str(v)) for k, v in data.get("named") or ()),
            header=(str(header[0]), str(header[1])) if header else None,
            buttons=tuple((str(k), int(i), str(v)) for k, i, v in data.get("buttons") or ()),
            content_sid=data.get("content_sid"),
            category=data.get("category"),
        )
    fallback = data.get("fallback")
    template = from_json(fallback) if fallback else None
    if template is not None and not isinstance(template, TemplateMessage):
        raise ValueError("a fallback must be a template")
    if kind == "text":
        return TextMessage(data["body"], template)
    if kind == "media":
        if data["kind"] not in MEDIA_KINDS:
            raise ValueError(f"unknown media kind {data['kind']!r}")
        return MediaMessage(
            kind=data["kind"],
            link=data.get("link"),
            media_id=data.get("id"),
            file=data.get("file"),
            caption=data.get("caption"),
            filename=data.get("filename"),
            fallback=template,
        )
    if kind == "location":
        return LocationMessage(
            str(data["latitude"]),
            str(data["longitude"]),
            data.get("name"),
            data.get("address"),
            template,
        )
    if kind == "reaction":
        return ReactionMessage(str(data["message_id"]), str(data["emoji"]), template)
    if kind == "buttons":
        return ButtonsMessage(
            body=data["body"],
            buttons=tuple(Button(b["id"], b["title"]) for b in data["buttons"]),
            header=data.get("header"),
            footer=data.get("footer"),
            fallback=template,
        )
    if kind == "list":
        return ListMessage(
            body=data["body"],
            button=data["button"],
            sections=tuple(
                Section(
                    s.get("title"),
                    tuple(Row(r["id"], r["title"], r.get("description")) for r in s["rows"]),
                )
                for s in data["sections"]
            ),
            header=data.get("header"),
            footer=data.get("footer"),
            fallback=template,
        )
    raise ValueError(f"unknown outbound message type {kind!r}")


# --- fitting run-time text into the limits ---------------------------------------------------


@dataclass(slots=True)
class Fitted:
    messages: list[OutMessage]
    split: int = 0  # extra messages created by splitting long text
    shortened: int = 0  # titles, headers or footers cut with an ellipsis


MAX_PARTS = 5  # a text filled in at run time is sent as at most this many messages


def _pieces(body: str, limit: int, out: Fitted) -> list[str]:
    """`body` in pieces WhatsApp accepts; past MAX_PARTS pieces it is cut with an ellipsis (a
    50 MB value in a slot must not become 12,000 messages to one customer)."""
    cut = len(body) > MAX_PARTS * limit
    parts = split_text(body[: MAX_PARTS * limit] if cut else body, limit)
    if cut or len(parts) > MAX_PARTS:
        parts = parts[:MAX_PARTS]
        parts[-1] = parts[-1][: limit - 1].rstrip() + "…"
        out.shortened += 1
    return parts


def fit(message: OutMessage) -> Fitted:
    """Split long text and shorten long titles so WhatsApp accepts `message`."""
    out = Fitted(messages=[])
    if isinstance(message, TemplateMessage | ReactionMessage):
        out.messages = [message]  # its text is the approved one: WhatsApp checked it
        return out
    if isinstance(message, LocationMessage):
        out.messages = [
            replace(
                message,
                name=_short(message.name, LIMITS["location_name"], out),
                address=_short(message.address, LIMITS["location_address"], out),
            )
        ]
        return out
    if isinstance(message, MediaMessage):
        caption = message.caption
        if caption is not None and len(caption) > LIMITS["caption"]:
            # The caption is the last piece of a long text: nothing is dropped.
            parts = _pieces(caption, LIMITS["caption"], out)
            out.split = len(parts) - 1
            out.messages = [TextMessage(p, message.fallback) for p in parts[:-1]]
            out.messages.append(replace(message, caption=parts[-1]))
        else:
            out.messages = [message]
        return out
    # Every piece of a long text carries the fallback: outside the window the template goes
    # once in place of them all (see engine.conversation).
    fallback = message.fallback
    if isinstance(message, TextMessage):
        parts = _pieces(message.body, LIMITS["text"], out)
        out.messages = [TextMessage(p, fallback) for p in parts]
        out.split = len(parts) - 1
        return out
    limit = LIMITS["button_body"] if isinstance(message, ButtonsMessage) else LIMITS["list_body"]
    parts = _pieces(message.body, limit, out)
    out.split = len(parts) - 1
    out.messages = [TextMessage(p, fallback) for p in parts[:-1]]
    head = _short(message.header, LIMITS["header"], out)
    foot = _short(message.footer, LIMITS["footer"], out)
    if isinstance(message, ButtonsMessage):
        titles = _unique([_short(b.title, LIMITS["button_title"], out) for b in message.buttons])
        buttons = tuple(replace(b, title=t) for b, t in zip(message.buttons, titles, strict=True))
        out.messages.append(ButtonsMessage(parts[-1], buttons, head, foot, fallback))
    else:
        sections = []
        for s in message.sections:
            titles = _unique([_short(r.title, LIMITS["row_title"], out) for r in s.rows])
            rows = tuple(
                replace(
                    r, title=t, description=_short(r.description, LIMITS["row_description"], out)
                )
                for r, t in zip(s.rows, titles, strict=True)
            )
            sections.append(Section(_short(s.title, LIMITS["section_title"], out), rows))
        button = _short(message.button, LIMITS["list_button"], out) or "Options"
        out.messages.append(ListMessage(parts[-1], button, tuple(sections), head, foot, fallback))
    return out


E164_TEXT = 1600  # Twilio's limit on a message body (error 21617); its numbers are E.164
E164_OPTIONS = 400  # what a list of button or row titles may add, as text, on Twilio


def refit(messages: list[OutMessage], number: str) -> list[OutMessage]:
    """Messages for a Twilio number (E.164, '+'): bodies within its 1,600 characters, where the
    titles of buttons and rows are added to the body as text. Meta's numbers keep them as
    they are."""
    if not number.startswith("+"):
        return messages
    out: list[OutMessage] = []
    for m in messages:
        if isinstance(m, TextMessage) and len(m.body) > E164_TEXT:
            out.extend(TextMessage(p, m.fallback) for p in split_text(m.body, E164_TEXT))
        elif isinstance(m, ButtonsMessage | ListMessage) and len(m.body) > E164_TEXT - E164_OPTIONS:
            *lead, last = split_text(m.body, E164_TEXT - E164_OPTIONS)
            out.extend(TextMessage(p, m.fallback) for p in lead)
            out.append(replace(m, body=last))
        else:
            out.append(m)
    return out


def split_text(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` characters, at paragraph, line or word ends."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            cut = window.rfind(sep)
            if cut > limit // 2:
                break
        if cut <= limit // 2:
            cut = limit  # no good place: cut mid-word rather than lose text
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + ELLIPSIS


def _short(text: str | None, limit: int, out: Fitted) -> str | None:
    if text is None or len(text) <= limit:
        return text
    out.shortened += 1
    return shorten(text, limit)


def _unique(titles: list[str | None]) -> list[str]:
    """Titles must be unique within a message; shortening can make two equal."""
    seen: set[str] = set()
    result = []
    for t in titles:
        title = t or ""
        n = 2
        while title in seen:
            suffix = f"{ELLIPSIS}{n}"
            title = (t or "")[: max(0, len(t or "") - len(suffix))] + suffix
            n += 1
        seen.add(title)
        result.append(title)
    return result
