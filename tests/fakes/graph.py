"""A fake WhatsApp Cloud API (Graph API) on loopback.

It answers `POST /{version}/{phone_number_id}/messages` as Meta does, records every request
(number, body, Authorization header), and can be scripted to answer errors: a queue of
(status, body[, headers]) answers consumed by the next requests, an answer given to every
request while `failing` is set (an outage, a stream of 429s), and a `token` that every request
must carry (a revoked token is answered with Meta's error 190). With `send_statuses`, it
also posts a signed `sent` status webhook for every message it accepts, echoing the
`biz_opaque_callback_data` it was sent, and retries it until the engine answers 200 (as Meta
retries webhooks), wherever the engine listens by then. Run as a process
(`python -m tests.fakes.graph --port P --log FILE`) it appends one JSON line per request to FILE,
so a test can read what was sent even after the engine that sent it was killed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp
from aiohttp import web


def meta_error(code: int, message: str = "error", status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {
        "error": {
            "message": f"(#{code}) {message}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam",
        }
    }


@dataclass
class FakeGraph:
    log: TextIO | None = None
    latency: float = 0.0
    keep: bool = True  # keep every request in memory (a long benchmark would not)
    requests: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)  # what /media received
    script: deque[tuple[Any, ...]] = field(default_factory=deque)
    failing: tuple[Any, ...] | None = None  # (status, body[, headers]) for every request
    # An answer for the requests it picks, by business number and body (a message the provider
    # keeps refusing, a number that is down while another works).
    refuse: Callable[[str, dict[str, Any]], tuple[Any, ...] | None] | None = None
    token: str | None = None  # when set, the only Bearer token accepted
    clock: Callable[[], float] = time.time  # what `received` and `at` are measured with
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Status webhooks: (session, where the engine listens now, app secret), and those under way.
    _statuses: tuple[aiohttp.ClientSession, Callable[[], str], str] | None = None
    _posting: set[asyncio.Task[None]] = field(default_factory=set)
    status_delay: float = 0.2  # seconds after accepting, as Meta's "sent" comes soon after

    def send_statuses(
        self, session: aiohttp.ClientSession, url: Callable[[], str], secret: str
    ) -> None:
        """Post a `sent` status for each accepted message to `url()` + /webhooks/whatsapp."""
        self._statuses = (session, url, secret)

    async def statuses_posted(self) -> None:
        """Wait until every status webhook has been answered 200."""
        while self._posting:
            await asyncio.gather(*list(self._posting), return_exceptions=True)

    async def _post_status(self, wamid: str, body: dict[str, Any]) -> None:
        assert self._statuses is not None
        session, url, secret = self._statuses
        await asyncio.sleep(self.status_delay)
        item = {
            "id": wamid,
            "status": "sent",
            "timestamp": str(int(time.time())),
            "recipient_id": str(body.get("to") or "").lstrip("+"),
        }
        if "biz_opaque_callback_data" in body:
            item["biz_opaque_callback_data"] = body["biz_opaque_callback_data"]
        doc = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "WABA",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550000000",
                                    "phone_number_id": body["_number"],
                                },
                                "statuses": [item],
                            },
                        }
                    ],
                }
            ],
        }
        raw = json.dumps(doc).encode()
        signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
        headers = {"X-Hub-Signature-256": signature, "Content-Type": "application/json"}
        delay = 0.25
        while True:  # as Meta: again and again until the answer is 200
            try:
                async with session.post(
                    f"{url()}/webhooks/whatsapp", data=raw, headers=headers
                ) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def answer_next(self, *answers: tuple[Any, ...]) -> None:
        """Queue answers for the next requests; after them, requests succeed again."""
        self.script.extend(answers)

    def sent(self) -> list[dict[str, Any]]:
        """The bodies of the requests that were answered with a message id."""
        return [r["body"] for r in self.requests if r["wamid"]]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/{number}/messages", self.handle)
        app.router.add_post("/{version}/{number}/media", self.upload)
        return app

    async def upload(self, request: web.Request) -> web.Response:
        """The media endpoint: multipart with messaging_product, type and file; a media id."""
        form = await request.post()
        file = form.get("file")
        record = {
            "number": request.match_info["number"],
            "auth": request.headers.get("Authorization"),
            "fields": {k: v for k, v in form.items() if isinstance(v, str)},
            "filename": getattr(file, "filename", None),
            "content_type": getattr(file, "content_type", None),
            "bytes": file.file.read() if hasattr(file, "file") else None,
            "received": self.clock(),
        }
        self.uploads.append(record)
        if form.get("messaging_product") != "whatsapp" or file is None:
            return web.json_response(meta_error(100, "Invalid parameter")[1], status=400)
        return web.json_response({"id": f"{4490000000000000 + len(self.uploads)}"})

    async def handle(self, request: web.Request) -> web.Response:
        """Decide and record at receipt (a real provider keeps a message it has received, even
        if the client stops waiting), then answer after `latency`."""
        body = await request.json()
        now = self.clock()
        record: dict[str, Any] = {
            "number": request.match_info["number"],
            "version": request.match_info["version"],
            "auth": request.headers.get("Authorization"),
            "body": body,
            "received": now,  # the provider has the message from here on
            "at": now,  # updated when the answer leaves
            "wamid": None,
        }
        headers: dict[str, str] = {}
        answer = None
        if self.token is not None and record["auth"] != f"Bearer {self.token}":
            answer = meta_error(190, "Error validating access token: Session has expired", 401)
        elif self.failing is not None:
            answer = self.failing
        elif (
            self.refuse is not None and (refused := self.refuse(record["number"], body)) is not None
        ):
            answer = refused
        elif self.script:
            answer = self.script.popleft()
        if answer is not None:
            status, data = answer[0], answer[1]
            headers = answer[2] if len(answer) > 2 else {}
        elif body.get("status") == "read":  # a read receipt (and typing indicator)
            status, data = 200, {"success": True}
        else:
            record["wamid"] = wamid = f"wamid.fake.{next(self._ids)}"
            status = 200
            if self._statuses is not None:
                task = asyncio.create_task(
                    self._post_status(wamid, {**body, "_number": record["number"]})
                )
                self._posting.add(task)
                task.add_done_callback(self._posting.discard)
            to = body.get("to") or body.get("recipient")
            data = {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": str(to).lstrip("+")}],
                "messages": [{"id": wamid}],
            }
        record["status"] = status
        if self.keep:
            self.requests.append(record)
        if self.log is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        if self.latency:
            await asyncio.sleep(self.latency)
            record["at"] = self.clock()
        return web.json_response(data, status=status, headers=headers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", help="append one JSON line per request here")
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    fake = FakeGraph(log=log, latency=args.latency, keep=bool(args.log))
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
