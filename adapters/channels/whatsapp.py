"""The WhatsApp Cloud API sender: POST /{phone_number_id}/messages with a Bearer token.

`graph_body` and `outcome` are pure: what we send for each message type, and what an answer
means for what has to wait. Meta asks clients to branch on `error.code`, not on the HTTP status:
outages, throughput limits and token or account problems pause the whole number (ChannelDown),
the per-recipient pair rate makes one contact wait, and the rest is about the message itself.
"""

from __future__ import annotations

import logging
import mimetypes
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from engine.backoff import retry_after as retry_after_seconds
from engine.errors import (
    BadMessage,
    ChannelDown,
    ConfigError,
    OptedOut,
    OutsideWindow,
    PermanentDelivery,
    RetryableDelivery,
)
from engine.events import scrub
from engine.logs import redact
from engine.outbound import (
    ButtonsMessage,
    ListMessage,
    LocationMessage,
    MediaMessage,
    ReactionMessage,
    TemplateMessage,
    TextMessage,
    media_path,
)
from engine.ports import Outgoing
from engine.settings import Secret

from .transport import transport_error

log = logging.getLogger(__name__)

# What has to wait, by Meta error code (whatsapp.md §2.8). Meta asks clients to branch on the
# code, not on the HTTP status; the status decides only for a code not listed here (or none).
OUTAGE = frozenset({1, 2, 131016, 131057})  # the provider is down or in maintenance
THROTTLED = frozenset({4, 17, 32, 613, 80004, 80007, 80008, 130429})  # over a rate limit
# The token or the account: expired or revoked token, missing permission, a deleted number,
# restricted, locked or unpaid account, spam limit. Every message of the number would fail the
# same way until someone fixes it.
AUTH = frozenset(
    {0, 3, 10, 33, 102, 190, 368, 131005, 131031, 131042, 131045, 131048, *range(200, 300)}
)
# About this message alone (its recipient, its content, its template, the 24-hour window).
MESSAGE = frozenset(
    {
        100,
        130403,
        130472,
        130497,
        131008,
        131009,
        131021,
        131026,
        131030,
        131047,
        131049,
        131050,
        131051,
        131052,
        131053,
        131062,
        135000,
        *range(132000, 132100),
    }
)
PAIR_RATE = 131056  # too many messages to one recipient: only that contact waits
UNKNOWN = 131000  # "something went wrong": tried again, UNKNOWN_ATTEMPTS times in all
UNKNOWN_ATTEMPTS = 3
WINDOW_CLOSED = 131047  # more than 24 hours since the customer's last message
STOPPED_MARKETING = 131050  # the customer stopped marketing messages
MARKETING_CAP = 131049  # per-user marketing limit: not before 24 hours
MALFORMED = frozenset({100, 131008, 131009})  # the message as built is wrong
_TOKEN = re.compile(r"[!-~]+")  # a token is one run of printable ASCII: it goes in a header
_MESSAGE_ID = re.compile(r"[!-~]{1,512}")  # Meta's wamid.*: printable ASCII


def graph_body(out: Outgoing, media_id: str | None = None) -> dict[str, Any]:
    """The /messages request for `out`; `media_id`: what the upload of its file returned."""
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    if out.phone:
        body["to"] = "+" + out.phone.lstrip("+")  # without '+' Meta may prepend a country code
    elif out.user_id:
        body["recipient"] = out.user_id
    else:
        raise PermanentDelivery("the contact has neither a phone number nor a user id", local=True)
    body["biz_opaque_callback_data"] = out.id[:512]
    m = out.message
    if out.reply_to and not isinstance(m, ReactionMessage):
        body["context"] = {"message_id": out.reply_to}  # a contextual reply: it quotes that one
    if isinstance(m, TextMessage):
        body["type"] = "text"
        body["text"] = {"body": m.body, "preview_url": "http" in m.body}
    elif isinstance(m, TemplateMessage):
        body["type"] = "template"
        body["template"] = template_body(m)
    elif isinstance(m, MediaMessage):
        body["type"] = m.kind
        body[m.kind] = media_object(m, media_id)
    elif isinstance(m, LocationMessage):
        body["type"] = "location"
        place: dict[str, Any] = {"latitude": m.latitude, "longitude": m.longitude}
        place.update({k: v for k, v in (("name", m.name), ("address", m.address)) if v})
        body["location"] = place
    elif isinstance(m, ReactionMessage):
        body["type"] = "reaction"
        body["reaction"] = {"message_id": m.message_id, "emoji": m.emoji}
    else:
        body["type"] = "interactive"
        body["interactive"] = _interactive(m)
    return body


def media_object(m: MediaMessage, media_id: str | None = None) -> dict[str, Any]:
    """{"id": ...} or {"link": ...}, with the caption (not for audio) and a document's name."""
    ident = media_id or m.media_id
    media: dict[str, Any] = {"id": ident} if ident else {"link": m.link}
    if m.caption and m.kind != "audio":
        media["caption"] = m.caption
    if m.kind == "document":
        name = m.filename or (Path(m.file).name if m.file else None)
        if name:
            media["filename"] = name
    return media


def _interactive(m: ButtonsMessage | ListMessage) -> dict[str, Any]:
    interactive: dict[str, Any] = {"body": {"text": m.body}}
    if m.header:
        interactive["header"] = {"type": "text", "text": m.header}
    if m.footer:
        interactive["footer"] = {"text": m.footer}
    if isinstance(m, ButtonsMessage):
        interactive["type"] = "button"
        interactive["action"] = {
            "buttons": [
                {"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in m.buttons
            ]
        }
    elif isinstance(m, ListMessage):
        interactive["type"] = "list"
        sections = []
        for s in m.sections:
            rows = []
            for r in s.rows:
                row = {"id": r.id, "title": r.title}
                if r.description:
                    row["description"] = r.description
                rows.append(row)
            section: dict[str, Any] = {"rows": rows}
            if s.title:
                section["title"] = s.title
            sections.append(section)
        interactive["action"] = {"button": m.button, "sections": sections}
    return interactive


def template_body(m: TemplateMessage) -> dict[str, Any]:
    """The `template` object: name, language and the values, by component (whatsapp.md §2.5)."""
    components: list[dict[str, Any]] = []
    if m.header is not None:
        kind, value = m.header
        if kind == "text":
            parameter: dict[str, Any] = {"type": "text", "text": value}
        else:
            media: dict[str, Any] = {"link": value} if "://" in value else {"id": value}
            if kind == "document" and "link" in media:
                media["filename"] = value.rsplit("/", 1)[-1].split("?", 1)[0] or "document"
            parameter = {"type": kind, kind: media}
        components.append({"type": "header", "parameters": [parameter]})
    if m.params:
        components.append(
            {"type": "body", "parameters": [{"type": "text", "text": v} for v in m.params]}
        )
    elif m.named:
        components.append(
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "parameter_name": k, "text": v} for k, v in m.named
                ],
            }
        )
    for kind, index, value in m.buttons:
        parameter = (
            {"type": "payload", "payload": value}
            if kind == "quick_reply"
            else {
                "type": "text",
                "text": value,
            }
        )
        components.append(
            {"type": "button", "sub_type": kind, "index": str(index), "parameters": [parameter]}
        )
    template: dict[str, Any] = {"name": m.name, "language": {"code": m.language}}
    if components:
        template["components"] = components
    return template


def outcome(status: int, data: Any, retry_after: str | None = None, key: str = "messages") -> str:
    """The provider message id of a successful send (`key` "id": an upload's media id;
    "success": a read receipt, answered "ok"); raises a DeliveryError otherwise."""
    error = data.get("error") if isinstance(data, dict) else None
    wait = retry_after_seconds(retry_after)
    if 200 <= status < 300 and not error:
        try:
            if key == "success":
                if data["success"] is not True:
                    raise TypeError(data)
                return "ok"
            provider_id = data["messages"][0]["id"] if key == "messages" else data[key]
            if not isinstance(provider_id, str) or not _MESSAGE_ID.fullmatch(provider_id):
                raise TypeError(provider_id)
            return provider_id
        except (KeyError, IndexError, TypeError):
            # Not the Graph API talking (a proxy, a captive portal, a wrong URL): not about the
            # message, and every other message would get the same.
            raise ChannelDown(
                f"HTTP {status} without a message id: is WHATSAPP_API_URL the Graph API?",
                cause="outage",
                status=status,
            ) from None
    if not isinstance(error, dict):
        raise ChannelDown(
            f"HTTP {status} without a Graph API error",
            cause=_cause(status, None) or "outage",
            status=status,
            retry_after=wait,
        )
    try:
        code: int | None = int(error.get("code"))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        code = None
    if code is not None and not 0 <= code < 2**31:
        code = None  # no such code: it would not even fit the store's column
    data_ = error.get("error_data")
    details = data_.get("details") if isinstance(data_, dict) else None
    title = scrub(str(details or error.get("message") or f"HTTP {status}")[:300])
    if code is not None:
        title = f"({code}) {title}"
    why = _cause(status, code)
    if why is not None:
        raise ChannelDown(title, cause=why, code=code, status=status, retry_after=wait)
    raise _about_message(title, code, status, wait)


def _about_message(
    title: str, code: int | None, status: int, wait: float | None
) -> RetryableDelivery | PermanentDelivery:
    """The error for an answer about this one message (not its number)."""
    if code == PAIR_RATE:
        return RetryableDelivery(title, code=code, status=status, retry_after=wait)
    if code == UNKNOWN:
        return RetryableDelivery(title, code=code, status=status, attempts=UNKNOWN_ATTEMPTS)
    if code == WINDOW_CLOSED:
        return OutsideWindow(title, code=code, status=status)
    if code == STOPPED_MARKETING:
        return OptedOut(title, code=code, status=status)
    if code == MARKETING_CAP:
        return OptedOut(title, code=code, status=status, seconds=24 * 3600.0)
    if code in MALFORMED:
        return BadMessage(title, code=code, status=status)
    return PermanentDelivery(title, code=code, status=status)


def _cause(status: int, code: int | None) -> str | None:
    """Why the whole number has to wait, or None when the answer is about this message."""
    if code in OUTAGE:
        return "outage"
    if code in THROTTLED:
        return "throttled"
    if code in AUTH:
        return "auth"
    if code in MESSAGE or code in (PAIR_RATE, UNKNOWN):
        return None
    # A code this table does not know, or none: the HTTP status decides, so that an outage
    # with a new code does not fail every reply.
    if status == 429:
        return "throttled"
    if status in (401, 403):
        return "auth"
    if status >= 500 or status in (408, 409):
        return "outage"
    return None


class AccessToken:
    """The Bearer token: a fixed value, or a file that is read again after the provider refused
    the token, so a renewed token is picked up by the next probe without a restart."""

    def __init__(self, value: Secret | None = None, path: Path | None = None) -> None:
        if (value is None) == (path is None):
            raise ValueError("give the token or the file that holds it, not both")
        self._path = path
        if value is not None and not _TOKEN.fullmatch(value.reveal()):
            raise ConfigError("WHATSAPP_ACCESS_TOKEN holds spaces or control characters")
        self._value = value.reveal() if value is not None else self._read()
        self._stale = False

    def _read(self) -> str:
        assert self._path is not None
        try:
            value = self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as e:
            raise ConfigError(f"WHATSAPP_ACCESS_TOKEN_FILE: cannot read {self._path}: {e}") from e
        if not value:
            raise ConfigError(f"WHATSAPP_ACCESS_TOKEN_FILE: {self._path} is empty")
        if not _TOKEN.fullmatch(value):
            raise ConfigError(
                f"WHATSAPP_ACCESS_TOKEN_FILE: the token in {self._path} holds spaces, line "
                "breaks or control characters (one line, the token alone)"
            )
        redact(value)
        return value

    def header(self) -> str:
        if self._stale and self._path is not None:
            self._stale = False
            try:
                self._value = self._read()
            except ConfigError as e:
                log.error("%s; still using the previous token", e)
        return f"Bearer {self._value}"

    def refused(self) -> None:
        """The provider refused the token: read the file again before the next request."""
        self._stale = True


class CloudApiSender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        token: AccessToken,
        *,
        timeout: float = 15.0,
        media_dir: Path | None = None,
    ) -> None:
        self._session = session
        self._api_url = api_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._media_dir = media_dir  # where files to upload live (MEDIA_DIR)

    async def send(self, out: Outgoing) -> str:
        media_id = None
        if isinstance(out.message, MediaMessage) and out.message.file:
            media_id = await self.upload(out.number, out.message)
        body = graph_body(out, media_id)
        return await self._post(f"{quote(out.number, safe='')}/messages", {"json": body})

    async def upload(self, number: str, m: MediaMessage) -> str:
        """POST /{number}/media (multipart) with a file of the media folder: its media id."""
        assert m.file is not None
        if self._media_dir is None:
            raise PermanentDelivery("no MEDIA_DIR to read the file from", local=True)
        try:
            path = media_path(self._media_dir, m.file, m.kind)
            data = path.read_bytes()
        except (ValueError, OSError) as e:
            raise PermanentDelivery(f"media file {m.file!r}: {e}", local=True) from e
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime)
        form.add_field("file", data, filename=path.name, content_type=mime)
        return await self._post(f"{quote(number, safe='')}/media", {"data": form}, key="id")

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        """Blue ticks on the customer's message, and "typing..." until the reply (or 25 s)."""
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        }
        if typing:
            body["typing_indicator"] = {"type": "text"}
        await self._post(f"{quote(number, safe='')}/messages", {"json": body}, key="success")

    async def _post(self, path: str, payload: dict[str, Any], key: str = "messages") -> str:
        headers = {"Authorization": self._token.header()}
        try:
            async with self._session.post(
                f"{self._api_url}/{path}", headers=headers, timeout=self._timeout, **payload
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except (ValueError, RecursionError):
                    data = None
                try:
                    return outcome(
                        response.status, data, response.headers.get("Retry-After"), key=key
                    )
                except ChannelDown as e:
                    if e.cause == "auth":
                        self._token.refused()
                    raise
        except (TimeoutError, aiohttp.ClientError) as e:
            raise transport_error(e) from e
