"""Helpers shared by the tests: Meta payload builders, signing, waiting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.channels.meta import sign
from engine.ports import Outgoing

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = Path(__file__).resolve().parent / "payloads" / "meta"
SECRET = "test-app-secret"
VERIFY = "test-verify-token"
ADMIN = "test-admin-token"
TOKEN = "test-access-token"
NUMBER = "106540352242922"


def payload(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def text(
    phone: str | None,
    wamid: str,
    body: str,
    *,
    ts: int = 1_750_000_000,
    user_id: str | None = None,
    name: str = "Ana",
) -> dict[str, Any]:
    """One inbound text message item."""
    item: dict[str, Any] = {
        "id": wamid,
        "timestamp": str(ts),
        "type": "text",
        "text": {"body": body},
    }
    if phone:
        item["from"] = phone
    if user_id:
        item["from_user_id"] = user_id
    return item


def button(
    phone: str, wamid: str, button_id: str, title: str, *, ts: int = 1_750_000_000
) -> dict[str, Any]:
    return {
        "from": phone,
        "id": wamid,
        "timestamp": str(ts),
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": {"id": button_id, "title": title}},
    }


def change(
    messages: list[dict[str, Any]], *, number: str = NUMBER, statuses: list[Any] | None = None
) -> dict[str, Any]:
    contacts = []
    for m in messages:
        c: dict[str, Any] = {"profile": {"name": "Ana"}}
        if m.get("from"):
            c["wa_id"] = m["from"]
        if m.get("from_user_id"):
            c["user_id"] = m["from_user_id"]
        contacts.append(c)
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": number},
    }
    if messages:
        value["contacts"] = contacts
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return {"field": "messages", "value": value}


def body(*changes: dict[str, Any], entries: int = 1) -> dict[str, Any]:
    """A webhook body; with entries > 1 the changes are spread over that many entries."""
    groups: list[list[dict[str, Any]]] = [[] for _ in range(entries)]
    for i, c in enumerate(changes):
        groups[i % entries].append(c)
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": f"WABA{i}", "changes": g} for i, g in enumerate(groups) if g],
    }


def status(
    wamid: str, state: str, *, ts: int = 1_750_000_100, code: int | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {"id": wamid, "status": state, "timestamp": str(ts), "recipient_id": "1"}
    if code is not None:
        item["errors"] = [{"code": code, "title": "failed", "error_data": {"details": "x"}}]
    return item


def signed(doc: dict[str, Any] | bytes, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return raw, {
        "X-Hub-Signature-256": sign(secret.encode(), raw),
        "Content-Type": "application/json",
    }


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll `check` until it returns something truthy (and return it), or fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


class Recorder:
    """A sender that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.read: list[tuple[str, str, bool]] = []  # (number, message id, typing)

    async def send(self, out: Outgoing) -> str:
        self.sent.append(out)
        return f"wamid.{out.id}"

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        self.read.append((number, message_id, typing))

    def texts(self, contact: str) -> list[str]:
        return [o.message.body for o in self.sent if o.contact == contact]
