"""The built-in `http` action: a flow calls a business system's HTTP endpoint.

    action: http
    with: {url: "https://shop.example/api/orders", body: {items: "=cart", total: "=total"}}

The request is JSON (numbers written exactly, from Decimal) with these headers:

- `Idempotency-Key`: the call's key, the same when the call is made again after a crash, so the
  endpoint can do the work once;
- `X-Engine-Timestamp` and, when ACTIONS_SECRET is set, `X-Engine-Signature: sha256=<hex>`, the
  HMAC-SHA256 of `<timestamp>.<body>` with that secret, so the endpoint can tell the engine from
  anyone else (and refuse an old timestamp).

A 2xx answer's JSON (or text) is the result. Any other 4xx is the endpoint's refusal: on_error:
with kind "rejected". A 408, 429, 5xx, a connection error or a timeout is tried again, with
backoff, while the step's within: allows; then on_error: with kind "unavailable". Redirects are
not followed, and an answer over 1 MiB is refused (kind "result").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import aiohttp

from engine.actions import ActionContext, ActionFailed
from engine.backoff import Backoff, retry_after
from engine.ports import Clock

log = logging.getLogger(__name__)

MAX_ANSWER = 1024 * 1024
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
RETRY = Backoff(base=0.5, cap=5.0)
RETRIED = frozenset({408, 425, 429})
OURS = frozenset({"idempotency-key", "x-engine-timestamp", "x-engine-signature", "content-type"})


def dumps(value: Any) -> str:
    """JSON with Decimal numbers written exactly (json.dumps would refuse them or round them)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a number JSON can hold")
        return format(value, "f")
    if isinstance(value, Mapping):
        items = (f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class HttpAction:
    """Provides `http` to load_flows; `call` is the action. Close with `close()`."""

    def __init__(
        self,
        clock: Clock,
        secret: str | None = None,
        session: aiohttp.ClientSession | None = None,
        rand: Any = random.random,
    ) -> None:
        self._clock = clock
        self._secret = secret
        self._session = session
        self._own_session = session is None
        self._rand = rand

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def call(
        self,
        ctx: ActionContext,
        url: str,
        body: Any = None,
        method: str = "POST",
        headers: Mapping[str, Any] | None = None,
    ) -> Any:
        method = str(method).upper()
        if method not in METHODS:
            raise ActionFailed(f"method {method!r}: use one of {', '.join(METHODS)}", "rejected")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ActionFailed(f"url {url!r} is not an http(s) address", "rejected")
        try:
            data = b"" if body is None and method in ("GET", "DELETE") else dumps(body).encode()
        except ValueError as e:
            raise ActionFailed(f"body: {e}", "rejected") from None
        attempt = 0
        while True:
            attempt += 1
            remaining = ctx.deadline - self._clock.now()
            try:
                return await self._once(
                    ctx, method, url, data, extra=headers or {}, remaining=remaining
                )
            except _Again as e:
                wait = RETRY.delay(attempt, self._rand(), e.retry_after)
                if self._clock.now() + wait >= ctx.deadline:
                    raise ActionFailed(e.reason, "unavailable") from None
                log.info("http action to %s: %s; trying again in %.1fs", _host(url), e.reason, wait)
                await self._clock.sleep(wait)

    async def _once(
        self,
        ctx: ActionContext,
        method: str,
        url: str,
        data: bytes,
        *,
        extra: Mapping[str, Any],
        remaining: float,
    ) -> Any:
        timestamp = str(int(self._clock.now()))
        headers = {str(k): str(v) for k, v in extra.items() if str(k).lower() not in OURS}
        headers.update(
            {
                "Content-Type": "application/json",
                "Idempotency-Key": ctx.key,
                "X-Engine-Timestamp": timestamp,
            }
        )
        if self._secret:
            headers["X-Engine-Signature"] = signature(self._secret, timestamp, data)
        try:
            async with self._client().request(
                method,
                url,
                data=data or None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=max(remaining, 0.1)),
            ) as answer:
                raw = await _read(answer)
                status = answer.status
                wait = retry_after(answer.headers.get("Retry-After"))
                text_type = answer.content_type
        except (aiohttp.InvalidURL, aiohttp.ClientConnectorDNSError) as e:
            raise ActionFailed(f"cannot send to {url!r}: {e}", "rejected") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise _Again(f"{type(e).__name__}: {e}") from None
        except ValueError as e:  # aiohttp refuses a header
            raise ActionFailed(f"cannot send this request: {e}", "rejected") from None
        if status in RETRIED or status >= 500:
            raise _Again(f"HTTP {status}", wait)
        if not 200 <= status < 300:
            raise ActionFailed(f"HTTP {status}: {_excerpt(raw)}", "rejected")
        if not raw.strip():
            return None
        if text_type == "application/json" or raw.lstrip()[:1] in (b"{", b"["):
            try:
                return json.loads(raw, parse_float=Decimal)
            except (ValueError, RecursionError):
                raise ActionFailed("the answer is not valid JSON", "result") from None
        return raw.decode("utf-8", "replace")


class _Again(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


async def _read(answer: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise ActionFailed(f"the answer is over {MAX_ANSWER // 1024} KiB", "result")
        chunks.append(chunk)
    return b"".join(chunks)


def _excerpt(raw: bytes, limit: int = 200) -> str:
    return " ".join(raw[:limit].decode("utf-8", "replace").split())


def _host(url: str) -> str:
    return url.split("/")[2] if url.count("/") >= 2 else url
