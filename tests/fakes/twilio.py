"""A fake Twilio REST API on loopback: `POST /2010-04-01/Accounts/{sid}/Messages.json` answered
as Twilio does (a Message resource with a sid, or an error `{code, message, status}`), with
basic auth checked; it records every form it receives and can be scripted to answer errors.
`signed_form` builds a webhook the way Twilio signs it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-test-auth-token"
BUSINESS = "+14155238886"


def twilio_error(code: int, message: str = "error", status: int = 400) -> tuple[int, Any]:
    return status, {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def sign(token: str, url: str, pairs: list[tuple[str, str]]) -> str:
    """What Twilio puts in X-Twilio-Signature (written independently of adapters.channels.twilio)."""
    values: dict[str, set[str]] = {}
    for k, v in pairs:
        values.setdefault(k, set()).add(v)
    data = url + "".join(k + v for k in sorted(values) for v in sorted(values[k]))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signed_form(
    url: str, fields: dict[str, str] | list[tuple[str, str]], token: str = TOKEN
) -> tuple[bytes, dict[str, str]]:
    pairs = list(fields.items()) if isinstance(fields, dict) else fields
    return urlencode(pairs).encode(), {
        "X-Twilio-Signature": sign(token, url, pairs),
        "Content-Type": "application/x-www-form-urlencoded",
        "I-Twilio-Idempotency-Token": "b1e2",
    }


def inbound(
    phone: str, sid: str, body: str = "", *, to: str = BUSINESS, **extra: str
) -> dict[str, str]:
    """An inbound WhatsApp message as Twilio posts it (the fields of a real capture)."""
    return {
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ProfileName": "Ana",
        "MessageType": "text",
        "SmsSid": sid,
        "WaId": phone,
        "SmsStatus": "received",
        "Body": body,
        "To": f"whatsapp:{to}",
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": ACCOUNT,
        "From": f"whatsapp:+{phone}",
        "ApiVersion": "2010-04-01",
        **extra,
    }


@dataclass
class FakeTwilio:
    requests: list[dict[str, Any]] = field(default_factory=list)
    script: deque[tuple[Any, ...]] = field(default_factory=deque)
    refuse: Callable[[dict[str, str]], tuple[Any, ...] | None] | None = None
    clock: Callable[[], float] = time.time
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def answer_next(self, *answers: tuple[Any, ...]) -> None:
        self.script.extend(answers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        record: dict[str, Any] = {
            "account": request.match_info["sid"],
            "auth_ok": request.headers.get("Authorization") == expected,
            "form": form,
            "received": self.clock(),
            "sid": None,
        }
        self.requests.append(record)
        answer = None
        if not record["auth_ok"]:
            answer = twilio_error(20003, "Authenticate", 401)
        elif self.refuse is not None and (refused := self.refuse(form)) is not None:
            answer = refused
        elif self.script:
            answer = self.script.popleft()
        if answer is not None:
            return web.json_response(answer[1], status=answer[0])
        record["sid"] = sid = f"SM{next(self._ids):032x}"
        return web.json_response(
            {
                "sid": sid,
                "status": "queued",
                "from": form.get("From"),
                "to": form.get("To"),
                "body": form.get("Body"),
                "error_code": None,
                "account_sid": ACCOUNT,
                "api_version": "2010-04-01",
            },
            status=201,
        )
