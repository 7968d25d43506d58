"""Request bodies, read under one byte budget shared by every request, within a deadline.

A webhook's signature can only be checked once its whole body is in memory, and anyone can open
connections and send large bodies slowly. So the bytes of the bodies being read or held at once
are bounded across all requests: a body that does not fit is answered 503 with `Retry-After`
(Meta retries) before a byte of it is read, one larger than the limit gets 413, and one that
does not arrive within the read timeout gets 408. A client that goes away mid-body costs one
DEBUG line, not a traceback. A body is read into one buffer of its declared length, not grown
chunk by chunk, and its share of the budget is given back when the request is done with it.

Freed is not returned: glibc keeps the heap pages that a flood of large short-lived buffers
(bodies, and the socket chunks they are read from) leaves behind, so the process would stay at
the flood's peak for good. Once a lot of body memory has come and gone and little is in use,
the budget asks glibc to hand those pages back (`malloc_trim`, where the C library has it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError


def loads(raw: str | bytes | bytearray, parse_int: Callable[[str], Any] | None = None) -> Any:
    """json.loads for bytes a stranger chose. A body nested a hundred thousand levels deep makes
    the decoder raise RecursionError at the interpreter's limit (the caller answers 400); while
    it is that deep, a garbage collection would run other objects' finalizers with no stack
    left, so the collector waits until the parse is over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(raw, parse_int=parse_int)
    finally:
        if enabled:
            gc.enable()


class BodyRefused(Exception):
    """The body will not be read: answer `status` (and `Retry-After` when given)."""

    def __init__(self, status: int, message: str, result: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.result = result  # the metrics label
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client closed the connection, or broke the body's framing, before it was whole."""


log = logging.getLogger(__name__)

TRIM_AFTER = 16 * 1024 * 1024  # body bytes released since the last trim
TRIM_BELOW = 1024 * 1024  # ...and no more than this in use
TRIM_DELAY = 1.0  # seconds: one trim for a burst, not one per request


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has no such call (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class BodyBudget:
    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.used = 0
        self.trims = 0
        self._released = 0
        self._trim = _malloc_trim()
        self._trim_pending = False

    def _give(self, n: int) -> None:
        self.used -= n
        self._released += n
        if (
            self._trim is not None
            and not self._trim_pending
            and self._released >= TRIM_AFTER
            and self.used <= TRIM_BELOW
        ):
            self._trim_pending = True
            asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._trim_pending = False
        if self._trim is not None and self.used <= TRIM_BELOW:
            self._released = 0
            self.trims += 1
            self._trim(0)
            log.debug("released body memory handed back to the system (trim %d)", self.trims)

    def _take(self, n: int) -> None:
        if self.used + n > self.limit:
            raise BodyRefused(503, "too many bodies in flight", "body_budget", retry_after=5)
        self.used += n

    @asynccontextmanager
    async def read(self, request: web.BaseRequest, max_size: int) -> AsyncIterator[bytearray]:
        """The whole body, counted against the budget until the `async with` block ends."""
        length = request.content_length
        # Every Content-Encoding header counts: aiohttp inflates by the last one it sees.
        codings = [
            c.strip().lower()
            for header in request.headers.getall("Content-Encoding", [])
            for c in header.split(",")
        ]
        encoding = ", ".join(c for c in codings if c not in ("", "identity"))
        if encoding:
            # Meta sends bodies as they are; a compressed one would be checked and parsed after
            # aiohttp inflated it, against a limit it was not sent with.
            raise BodyRefused(
                415, f"Content-Encoding {encoding[:40]!r} is not accepted", "body_encoding"
            )
        if length is not None and length > max_size:
            raise BodyRefused(413, f"body over {max_size} bytes", "body_too_large")
        self._take(length or 0)
        held = [length or 0]  # what this request holds of the budget
        try:
            yield await self._receive(request, length, max_size, held)
        finally:
            self._give(held[0])

    async def _receive(
        self, request: web.BaseRequest, length: int | None, max_size: int, held: list[int]
    ) -> bytearray:
        body = bytearray(length or 0)
        size = 0
        error: Exception | None = None
        try:
            async with asyncio.timeout(self.timeout):
                while chunk := await request.content.readany():
                    n = len(chunk)
                    if length is not None:
                        if size + n > length:
                            raise ClientGone("body longer than its Content-Length")
                        body[size : size + n] = chunk  # same length: written in place
                    else:  # chunked: counted as it comes
                        if size + n > max_size:
                            raise BodyRefused(413, f"body over {max_size} bytes", "body_too_large")
                        self._take(n)
                        held[0] += n
                        body += chunk
                    size += n
        except (BodyRefused, ClientGone) as e:
            error = e
        except TimeoutError:
            error = BodyRefused(408, "the body did not arrive in time", "body_timeout")
        except (
            ConnectionError,
            HttpProcessingError,
            web.RequestPayloadError,
            aiohttp.ClientError,
        ) as e:
            error = ClientGone(f"{type(e).__name__}: {e}")
        if error is not None:
            # The exception's traceback (kept by aiohttp with the request) holds this frame:
            # it must not hold the body too.
            body = bytearray()
            raise error.with_traceback(None) from None
        if length is not None and size != length:
            raise ClientGone(f"body ended after {size} of {length} bytes")
        return body
