"""Twilio's WhatsApp channel: its webhook (signature, form fields into the engine's events) and
its REST API (sending, and what its error codes mean).

The signature is checked exactly as Twilio's own validators do: HMAC-SHA1 with the auth token
over the URL Twilio called (PUBLIC_URL + path + query) followed by each form parameter, sorted
by name (a repeated name: its values sorted, duplicates dropped), name then value, in base64;
the URL is tried as given, with the scheme's default port added and with any port removed. A
JSON body is signed through `bodySHA256` in the query instead.

A Twilio conversation's business number is its WhatsApp sender in E.164 (`+14155238886`): the
`+` sets it apart from Meta's phone number ids, so a reply leaves on the channel its
conversation came in on. Interactive messages (buttons, lists) become text with the options
listed, since Twilio sends those only through approved Content templates; the customer types
a title, which flows match like a tap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import aiohttp

from engine.backoff import retry_after as retry_after_seconds
from engine.errors import (
    ChannelDown,
    OptedOut,
    OutsideWindow,
    PermanentDelivery,
)
from engine.events import (
    Audio,
    ButtonReply,
    Content,
    Customer,
    Document,
    ErrorDetail,
    Event,
    Image,
    Location,
    Message,
    StatusUpdate,
    Text,
    Unknown,
    Video,
    scrub,
)
from engine.outbound import (
    ButtonsMessage,
    ListMessage,
    LocationMessage,
    MediaMessage,
    ReactionMessage,
    TemplateMessage,
    TextMessage,
)
from engine.ports import Outgoing
from engine.settings import Secret

from .transport import transport_error

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.twilio.com"
CHANNEL = "whatsapp:"
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_SID = re.compile(r"(SM|MM|IM)[0-9a-fA-F]{32}")
# MessageStatus -> the engine's status ladder (engine.records.STATUS_RANK); None: not a step.
STATUSES = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
}
WINDOW_CLOSED = 63016  # free-form message outside the 24-hour window
RATE = 63018  # over the rate or the messaging limit of the sender
OPTED_OUT = 21610  # the recipient replied STOP
INVALID_RECIPIENT = frozenset({21211, 21614, 63024, 63003})  # not a (WhatsApp) number
AUTH = frozenset({20003, 63007})  # authentication failed; the sender is not a WhatsApp channel


# --- the signature ---------------------------------------------------------------------------


def signature(token: str, url: str, params: Mapping[str, Sequence[str]]) -> str:
    """base64(HMAC-SHA1(token, url + each sorted name and its sorted, distinct values))."""
    signed = url
    for name in sorted(params):
        for value in sorted(set(params[name])):
            signed += name + value
    mac = hmac.new(token.encode("utf-8"), signed.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def _with_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is not None or not parts.hostname:
        return url
    port = 443 if parts.scheme == "https" else 80
    netloc = parts.netloc + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _without_port(url: str) -> str:
    parts = urlsplit(url)
    if parts.port is None:
        return url
    netloc = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=netloc))


def valid(
    token: str, url: str, params: Mapping[str, Sequence[str]], given: str, body: bytes = b""
) -> bool:
    """Whether `given` (X-Twilio-Signature) signs this request, as Twilio's validators decide."""
    query = parse_qs(urlsplit(url).query)
    body_ok = True
    if "bodySHA256" in query:  # a JSON body: the URL is signed, the body by its hash
        params = {}
        body_ok = hmac.compare_digest(
            hashlib.sha256(body).hexdigest().encode(), query["bodySHA256"][0].encode()
        )
    ok = False
    for candidate in {url, _with_port(url), _without_port(url)}:
        computed = signature(token, candidate, params)
        ok |= hmac.compare_digest(computed.encode(), given.encode("utf-8", "surrogatepass"))
    return body_ok and ok


# --- inbound: form fields into events --------------------------------------------------------


def number_of(address: str | None) -> str | None:
    """'whatsapp:+14155238886' -> '+14155238886' (None for anything else)."""
    if not address or not address.startswith(CHANNEL):
        return None
    e164 = address[len(CHANNEL) :].strip()
    return e164 if _E164.fullmatch(e164) else None


def parse_form(fields: Mapping[str, str], now: int) -> tuple[list[Event], list[str]]:
    """The events in one Twilio webhook (a message, or a status callback), and what was wrong
    (reasons to log); never raises."""
    sid = fields.get("MessageSid") or fields.get("SmsSid") or ""
    if not _SID.fullmatch(sid):
        return [], [f"MessageSid {sid[:40]!r} is not a Twilio message sid"]
    status = fields.get("MessageStatus")
    if status is not None:
        return _status(fields, sid, status, now)
    business = number_of(fields.get("To"))
    sender = number_of(fields.get("From"))
    if business is None or sender is None:
        return [], ["From and To must be whatsapp:+E.164 addresses"]
    wa_id = fields.get("WaId") or sender.lstrip("+")
    phone = wa_id if wa_id.isdigit() and 7 <= len(wa_id) <= 15 else sender.lstrip("+")
    name = fields.get("ProfileName") or None
    customer = Customer(business, phone=phone, name=scrub(name)[:256] if name else None)
    content = _content(fields)
    replied = fields.get("OriginalRepliedMessageSid") or None
    message = Message(sid, now, customer, content, reply_to=replied)
    return [message], []


def _status(
    fields: Mapping[str, str], sid: str, status: str, now: int
) -> tuple[list[Event], list[str]]:
    step = STATUSES.get(status)
    if step is None:  # queued, sending, accepted ...: not a step of the ladder
        return [], []
    business = number_of(fields.get("From")) or ""
    code = fields.get("ErrorCode")
    errors: tuple[ErrorDetail, ...] = ()
    if code and code.isdigit():
        errors = (ErrorDetail(int(code), scrub(fields.get("ErrorMessage") or "")[:300]),)
    return [
        StatusUpdate(
            sid,
            step,
            now,
            business,
            recipient=(number_of(fields.get("To")) or "").lstrip("+") or None,
            errors=errors,
            callback_data=None,
        )
    ], []


def _content(fields: Mapping[str, str]) -> Content:
    body = scrub(fields.get("Body") or "")
    payload = fields.get("ButtonPayload")
    if payload:
        return ButtonReply(scrub(payload)[:256], scrub(fields.get("ButtonText") or body)[:256])
    try:
        count = int(fields.get("NumMedia") or "0")
    except ValueError:
        count = 0
    url = fields.get("MediaUrl0") or ""
    if count > 0 and url:
        mime = fields.get("MediaContentType0") or ""
        caption = body or None
        if mime.startswith("image/"):
            return Image(media_id=url, mime_type=mime, caption=caption, url=url)
        if mime.startswith("video/"):
            return Video(media_id=url, mime_type=mime, caption=caption, url=url)
        if mime.startswith("audio/"):
            return Audio(media_id=url, mime_type=mime, url=url)
        return Document(media_id=url, mime_type=mime or None, caption=caption, url=url)
    lat, lon = fields.get("Latitude"), fields.get("Longitude")
    if lat and lon:
        try:
            latitude, longitude = float(lat), float(lon)
        except ValueError:
            return Unknown("location", {"Latitude": lat[:40], "Longitude": lon[:40]})
        if -90 <= latitude <= 90 and -180 <= longitude <= 180:
            return Location(
                latitude,
                longitude,
                name=scrub(fields.get("Label") or "")[:256] or None,
                address=scrub(fields.get("Address") or "")[:512] or None,
            )
    return Text(body)


# --- outbound --------------------------------------------------------------------------------


def form_of(out: Outgoing, public_url: str | None) -> dict[str, str]:
    """The Messages.json form for `out` (raises PermanentDelivery for what Twilio cannot
    send: reactions, files to upload)."""
    to = out.phone
    if not to:
        raise PermanentDelivery("a Twilio contact needs a phone number", local=True)
    form = {"From": CHANNEL + out.number, "To": CHANNEL + "+" + to.lstrip("+")}
    if public_url:
        # Twilio's status callbacks do not echo anything of ours: the id rides in the URL.
        form["StatusCallback"] = f"{public_url}/webhooks/twilio?ref={quote(out.id, safe=':')}"
    m = out.message
    if isinstance(m, TemplateMessage):
        if not m.content_sid:
            raise PermanentDelivery(
                f"template {m.name} has no twilio_content_sid in templates.yaml", local=True
            )
        if m.header is not None or any(kind == "url" for kind, _i, _v in m.buttons):
            raise PermanentDelivery(
                f"template {m.name}: a Content template on Twilio takes its values in "
                "ContentVariables only; header and button values cannot be sent",
                local=True,
            )
        form["ContentSid"] = m.content_sid
        values = dict(m.named) if m.named else {str(i + 1): v for i, v in enumerate(m.params)}
        if values:
            form["ContentVariables"] = json.dumps(values, ensure_ascii=False)
    elif isinstance(m, MediaMessage):
        if not m.link:
            raise PermanentDelivery(
                "Twilio sends media by link only (a public https URL)", local=True
            )
        form["MediaUrl"] = m.link
        if m.caption:
            form["Body"] = m.caption
    elif isinstance(m, LocationMessage):
        label = m.name or m.address or ""
        form["PersistentAction"] = f"geo:{m.latitude},{m.longitude}|{label}"
        form["Body"] = label or f"{m.latitude},{m.longitude}"
    elif isinstance(m, ReactionMessage):
        raise PermanentDelivery("Twilio's API sends no reactions", local=True)
    else:
        form["Body"] = _text_of(m)
    return form


def _text_of(m: TextMessage | ButtonsMessage | ListMessage) -> str:
    """Buttons and lists as text: Twilio sends interactive messages only as Content templates;
    the customer types a title (flows match it like a tap)."""
    if isinstance(m, TextMessage):
        return m.body
    lines = [f"*{m.header}*"] if m.header else []
    lines.append(m.body)
    if isinstance(m, ButtonsMessage):
        lines.extend(f"- {b.title}" for b in m.buttons)
    else:
        for section in m.sections:
            if section.title:
                lines.append(f"*{section.title}*")
            lines.extend(
                f"- {r.title}" + (f": {r.description}" if r.description else "")
                for r in section.rows
            )
    if m.footer:
        lines.append(f"_{m.footer}_")
    return "\n".join(lines)


def outcome(status: int, data: Any, retry_after: str | None = None) -> str:
    """The message sid of a send Twilio accepted; raises a DeliveryError otherwise."""
    wait = retry_after_seconds(retry_after)
    if 200 <= status < 300:
        sid = data.get("sid") if isinstance(data, dict) else None
        if isinstance(sid, str) and _SID.fullmatch(sid):
            return sid
        raise ChannelDown(
            f"HTTP {status} without a message sid: is TWILIO_API_URL Twilio's API?",
            cause="outage",
            status=status,
        )
    code = data.get("code") if isinstance(data, dict) else None
    code = code if isinstance(code, int) and 0 <= code < 2**31 else None
    message = data.get("message") if isinstance(data, dict) else None
    title = scrub(str(message or f"HTTP {status}"))[:300]
    if code is not None:
        title = f"({code}) {title}"
    if code == WINDOW_CLOSED:
        raise OutsideWindow(title, code=code, status=status)
    if code == OPTED_OUT:  # STOP: Twilio refuses every message until the customer says START
        raise OptedOut(title, code=code, status=status, everything=True)
    if code in INVALID_RECIPIENT:
        raise PermanentDelivery(title, code=code, status=status)
    if code == RATE or status == 429:
        raise ChannelDown(title, cause="throttled", code=code, status=status, retry_after=wait)
    if code in AUTH or status in (401, 403):
        raise ChannelDown(title, cause="auth", code=code, status=status)
    if status >= 500 or status in (408, 409) or not isinstance(data, dict):
        raise ChannelDown(title, cause="outage", code=code, status=status, retry_after=wait)
    if code is None and status == 404:
        raise ChannelDown(title, cause="outage", status=status)  # a wrong TWILIO_API_URL
    raise PermanentDelivery(title, code=code, status=status)


class TwilioSender:
    """POST {TWILIO_API_URL}/2010-04-01/Accounts/{sid}/Messages.json with basic auth."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_url: str,
        account_sid: str,
        auth_token: Secret,
        *,
        public_url: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        self._session = session
        self._url = f"{api_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid)}/Messages.json"
        pair = f"{account_sid}:{auth_token.reveal()}".encode()
        self._auth = "Basic " + base64.b64encode(pair).decode("ascii")
        self._public_url = public_url.rstrip("/") if public_url else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, out: Outgoing) -> str:
        form = form_of(out, self._public_url)
        try:
            async with self._session.post(
                self._url,
                data=urlencode(form),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": self._auth,
                },
                timeout=self._timeout,
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except (ValueError, RecursionError):
                    data = None
                return outcome(response.status, data, response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError) as e:
            raise transport_error(e) from e

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        """Twilio's API has no read receipts for WhatsApp: nothing to do."""


class Channels:
    """One engine, several channels: a message leaves on the channel of its business number
    (Twilio's are E.164 with '+', Meta's are phone number ids)."""

    def __init__(self, meta: Any, twilio: Any | None) -> None:
        self._meta = meta
        self._twilio = twilio

    def _for(self, number: str) -> Any:
        if number.startswith("+"):
            if self._twilio is None:
                raise PermanentDelivery(
                    "a Twilio conversation, and no Twilio credentials (TWILIO_ACCOUNT_SID, "
                    "TWILIO_AUTH_TOKEN)",
                    local=True,
                )
            return self._twilio
        return self._meta

    async def send(self, out: Outgoing) -> str:
        sid: str = await self._for(out.number).send(out)
        return sid

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        await self._for(number).mark_read(number, message_id, typing=typing)
