"""The admin API of orders and invoices (ADMIN_TOKEN, like the rest of /api/): list, show and
move an order's status; show an invoice, as JSON or PDF; record a payment. The customer is told
of each. Orders are records the order actions keep (ordering)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import unicodedata
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from engine.engine import Ambiguous, NotFound
from engine.errors import StoreRejected
from engine.events import scrub
from engine.logs import mask
from ordering import invoices, texts
from ordering.actions import DRAFT, ORDER, TEMPLATES, pay
from ordering.orders import STATUSES, Refused, moved, public

from .invoice_pdf import InvoicePdf
from .web import ENGINE, _error, read_json

log = logging.getLogger(__name__)

TEMPLATE = TEMPLATES["status"]  # templates.yaml: the status outside the 24-hour window
TRIES = 10
ZONE = web.AppKey("zone", ZoneInfo)  # TIMEZONE: payments' times and reminders' days
PDF = web.AppKey("pdf", InvoicePdf)


def add_order_routes(app: web.Application, zone: ZoneInfo) -> None:
    app[ZONE] = zone
    app[PDF] = InvoicePdf()
    app.router.add_get("/api/orders", api_orders)
    app.router.add_get("/api/orders/{number}", api_order)
    app.router.add_post("/api/orders/{number}/status", api_status)
    app.router.add_get("/api/invoices/{number}", api_invoice)
    app.router.add_post("/api/invoices/{number}/payments", api_payment)


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
    store = engine.records
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
            due = None if status == "cancelled" else found.due  # no reminders once cancelled
            written = await store.put_records([replace(found, status=status, data=after, due=due)])
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
    words = texts.STATUS_WORDS.get(order["status"], order["status"])
    template = request.app[ENGINE].template(
        TEMPLATE, {"number": str(order["number"]), "status": words}
    )
    ident = f"order:{order['number']}:{order['status']}"
    return await _notify(request, contact, ident, texts.status_line(order), template)


async def _notify(request: web.Request, contact: str, ident: str, text: str, template: Any) -> bool:
    try:
        await request.app[ENGINE].notify(contact, ident, text, template)
    except Exception:
        log.exception("%s: %s was not told", ident.split(":", 2)[:2], mask(contact))
        return False
    return True


# --- invoices and payments ---------------------------------------------------------------------


def _number(raw: str) -> str | None:
    """An order's number from an invoice's ("INV-1001") or its own ("1001"); None if neither."""
    key = raw.upper().removeprefix("INV-")
    return key if key.isdigit() and len(key) <= 18 else None


async def api_invoice(request: web.Request) -> web.StreamResponse:
    """GET /api/invoices/{number}: the invoice as JSON; with .pdf, as its PDF document."""
    raw = request.match_info["number"]
    as_pdf = raw.endswith(".pdf")
    number = _number(raw.removesuffix(".pdf"))
    found = await request.app[ENGINE].store.record(ORDER, number) if number else None
    if found is None:
        return _error(404, f"no invoice {raw[:24]!r}")
    if not as_pdf:
        return web.json_response(invoices.public(found.data))
    render = request.app[PDF]
    problem = render.problem()
    if problem is not None:
        return _error(503, problem)
    data = await asyncio.to_thread(render, found.data)
    name = f"{found.data['invoice']}.pdf"
    return web.Response(
        body=data,
        content_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}"'},
    )


async def api_payment(request: web.Request) -> web.Response:
    """{"amount": "2500.00", "reference": "UTR 402913"}: 201 and the invoice after it; the same
    reference again 200 (counted once); more than is owed 409; the customer gets a receipt."""
    number = _number(request.match_info["number"])
    data = await read_json(request, '{"amount": "2500.00", "reference": "UTR 402913"}')
    if isinstance(data, web.Response):
        return data
    if number is None:
        return _error(404, f"no invoice {request.match_info['number'][:24]!r}")
    engine = request.app[ENGINE]
    try:
        order, new = await pay(
            engine.records,
            number,
            data.get("amount"),
            data.get("reference"),
            now=engine.clock.now(),
            zone=request.app[ZONE],
        )
    except LookupError:
        return _error(404, f"no invoice {request.match_info['number'][:24]!r}")
    except invoices.BadPayment as e:
        return _error(400, str(e))
    except Refused as e:
        return _error(409, str(e))
    except StoreRejected as e:
        return _error(422, f"the payment could not be stored: {e}")
    reference = invoices.reference_of(data.get("reference"))
    payment = invoices.payment_of(order, reference)
    assert payment is not None  # pay() recorded it, now or before
    amount = payment["amount"]
    told = False
    if new:
        params = {
            "invoice": str(order["invoice"]),
            "amount": texts.money(amount, order["currency"], order["locale"]),
            "balance": texts.money(order["balance"], order["currency"], order["locale"]),
        }
        template = engine.template(TEMPLATES["receipt"], params)
        digest = hashlib.sha256(reference.encode()).hexdigest()[:16]
        text = texts.receipt(order, amount, reference)
        told = await _notify(request, order["contact"], f"paid:{number}:{digest}", text, template)
    body = {**invoices.public(order), "duplicate": not new, "told": told}
    return web.json_response(body, status=201 if new else 200)
