"""The WhatsApp Cloud API sender: POST /{phone_number_id}/messages with a Bearer token.

`graph_body` and `outcome` are pure: what we send for each message type, and how an answer is
classified. Meta asks clients to branch on `error.code`, not on the HTTP status: rate limits and
temporary faults are retried, everything else is recorded on the message as permanent.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from engine.errors import PermanentDelivery, RetryableDelivery
from engine.outbound import ButtonsMessage, ListMessage, TextMessage
from engine.ports import Outgoing
from engine.settings import Secret

# Codes that mean "the same request may succeed later" (whatsapp.md §2.8).
RETRYABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057, 133016})


def graph_body(out: Outgoing) -> dict[str, Any]:
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    if out.phone:
        body["to"] = "+" + out.phone.lstrip("+")  # without '+' Meta may prepend a country code
    elif out.user_id:
        body["recipient"] = out.user_id
    else:
        raise PermanentDelivery("the contact has neither a phone number nor a user id")
    body["biz_opaque_callback_data"] = out.id[:512]
    m = out.message
    if isinstance(m, TextMessage):
        body["type"] = "text"
        body["text"] = {"body": m.body, "preview_url": "http" in m.body}
        return body
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
    body["type"] = "interactive"
    body["interactive"] = interactive
    return body


def outcome(status: int, data: Any, retry_after: str | None = None) -> str:
    """The provider message id of a successful send; raises a DeliveryError otherwise."""
    error = data.get("error") if isinstance(data, dict) else None
    if 200 <= status < 300 and not error:
        try:
            return str(data["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise PermanentDelivery(f"HTTP {status} without a message id", status=status) from None
    code = None
    title = f"HTTP {status}"
    if isinstance(error, dict):
        try:
            code = int(error.get("code"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            code = None
        details = (
            (error.get("error_data") or {}).get("details")
            if isinstance(error.get("error_data"), dict)
            else None
        )
        title = str(details or error.get("message") or title)
    wait = _seconds(retry_after)
    if code in RETRYABLE_CODES or (code is None and (status >= 500 or status == 429)):
        raise RetryableDelivery(title, code=code, status=status, retry_after=wait)
    if code is None and status in (408, 409):
        raise RetryableDelivery(title, status=status, retry_after=wait)
    raise PermanentDelivery(title, code=code, status=status)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class CloudApiSender:
    def __init__(
        self, session: aiohttp.ClientSession, api_url: str, token: Secret, *, timeout: float = 15.0
    ) -> None:
        self._session = session
        self._api_url = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token.reveal()}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, out: Outgoing) -> str:
        url = f"{self._api_url}/{out.number}/messages"
        body = graph_body(out)
        try:
            async with self._session.post(
                url, json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
                return outcome(response.status, data, response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as e:  # no connection: nothing was sent
            raise RetryableDelivery(f"{type(e).__name__}: {e}") from e
        except (TimeoutError, aiohttp.ClientError) as e:  # sent, answer lost: Meta may have it
            raise RetryableDelivery(f"{type(e).__name__}: {e}", maybe_sent=True) from e
