"""The admin API of orders (ADMIN_TOKEN, like the rest of /api/): list, show, and move an
order's status, telling the customer. Orders are records the order actions keep (ordering)."""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from engine.engine import Ambiguous, NotFound
from engine.errors import StoreRejected
from engine.events import scrub
from engine.logs import mask
from engine.outbound import TemplateMessage
from ordering import texts
from ordering.actions import DRAFT, ORDER
from ordering.orders import STATUSES, Refused, moved, public

from .web import ENGINE, _error, read_json

log = logging.getLogger(__name__)

TEMPLATE = "order_update"  # templates.yaml: the status outside the 24-hour window
TRIES = 10


def add_order_routes(app: web.Application) -> None:
    app.router.add_get("/api/orders", api_orders)
    app.router.add_get("/api/orders/{number}", api_order)
    app.router.add_post("/api/orders/{number}/status", api_status)


async def api_orders(request: web.Request) -> web.Response:
    """Placed orders, newest first (drafts only with ?status=draft)."""
    q = request.query
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        return _error(400, f"status must be one of {', '.join(STATUSES)}")
    try:
        limit = min(max(int(q.get("limit", "50")), 1), 500)
    except ValueError:
        return _error(400, "limit must be a whole number")
    engine = request.app[ENGINE]
    contact = q.get("contact") or None
    if contact is not None and ":" not in contact:  # a phone or user id: its contact key
        try:
            contact = await engine.find(contact.lstrip("+"), q.get("number"))
        except (NotFound, Ambiguous):
            return web.json_response({"orders": []})
    kind = DRAFT if status == "draft" else ORDER
    found = await engine.store.records(kind, contact=contact, status=status, limit=limit)
    return web.json_response({"orders": [public(r.data) for r in found]})


async def api_order(request: web.Request) -> web.Response:
    number = request.match_info["number"]
    found = await request.app[ENGINE].store.record(ORDER, number) if number.isdigit() else None
    if found is None:
        return _error(404, f"no order {number[:20]!r}")
    return web.json_response(public(found.data))


async def api_status(request: web.Request) -> web.Response:
    """{"status": ..., "reason": ...}: forward only (409 otherwise); the customer is told."""
    number = request.match_info["number"]
    asked = await _asked(request)
    if isinstance(asked, web.Response):
        return asked
    status, reason = asked
    if status in {"draft", "confirmed"}:
        return _error(409, f"an order becomes {status} only through the conversation")
    if status == "cancelled" and not reason.strip():
        return _error(400, "a cancellation needs a reason")
    engine = request.app[ENGINE]
    store = engine.store
    for _ in range(TRIES):
        found = await store.record(ORDER, number) if number.isdigit() else None
        if found is None:
            return _error(404, f"no order {number[:20]!r}")
        at = datetime.fromtimestamp(engine.clock.now(), UTC).isoformat(timespec="seconds")
        try:
            after = moved(found.data, status, at, reason.strip())
        except Refused as e:
            return _error(409, str(e), current=found.status)
        if after is found.data or after == found.data:
            return web.json_response({**public(after), "told": False})
        try:
            written = await store.put_records([replace(found, status=status, data=after)])
        except StoreRejected as e:
            return _error(422, f"the order could not be stored: {e}")
        if written:
            told = await _tell(request, found.contact, after)
            return web.json_response({**public(after), "told": told})
    return _error(409, "the order kept changing; try again")


async def _asked(request: web.Request) -> tuple[str, str] | web.Response:
    """The status asked for and its reason (one line, no control characters: the customer
    reads it), or the 400 that says what is wrong."""
    data = await read_json(request, '{"status": "shipped"}')
    if isinstance(data, web.Response):
        return data
    if not isinstance(data.get("status"), str):
        return _error(400, 'send JSON like {"status": "shipped"}')
    reason = data.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        return _error(400, "reason must be a text of at most 500 characters")
    if data["status"] not in STATUSES:
        return _error(400, f"status must be one of {', '.join(STATUSES[2:])}")
    shown = "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in scrub(reason))
    return data["status"], " ".join(shown.split())


async def _tell(request: web.Request, contact: str, order: dict[str, Any]) -> bool:
    """The customer hears of the new status: as text in the 24-hour window, as the
    order_update template outside it (when templates.yaml declares it)."""
    engine = request.app[ENGINE]
    template: TemplateMessage | None = None
    known = engine.flows.templates.get(TEMPLATE)
    if known is not None:
        words = texts.STATUS_WORDS.get(order["status"], order["status"])
        try:
            template = known.fill({"number": str(order["number"]), "status": words}, None, [])
        except ValueError as e:
            log.warning("template %s does not fit an order's status: %s", TEMPLATE, e)
    ident = f"order:{order['number']}:{order['status']}"
    try:
        await engine.notify(contact, ident, texts.status_line(order), template)
    except Exception:
        log.exception("order %s: %s was not told of its new status", order["number"], mask(contact))
        return False
    return True
