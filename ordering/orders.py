"""Orders as data: a cart changed by what the customer wrote, the order a quote becomes, and the
moves of its status. Pure functions over JSON-ready mappings (amounts as decimal text); the
actions (ordering.actions) read and write them as the store's records.

    draft -> confirmed -> processing -> shipped -> delivered
       \\________\\____________\\___________\\-> cancelled (with a reason)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from .catalogue import Catalogue
from .parsing import Line
from .pricing import CartLine, Quote

FLOW = ("draft", "confirmed", "processing", "shipped", "delivered")
STATUSES = (*FLOW, "cancelled")
FIRST_NUMBER = 1001


class Refused(Exception):
    """A move the order's status cannot make (backwards, or out of an end)."""


def apply_lines(cart: Iterable[Mapping[str, Any]], lines: Iterable[Line]) -> list[dict[str, str]]:
    """The cart after `lines`: an item already in it gets the quantity written, a remove takes
    it out, a new item goes at the end."""
    out = {str(c["sku"]): str(c["quantity"]) for c in cart}
    for line in lines:
        if line.kind == "item":
            out[line.sku] = str(line.quantity)
        elif line.kind == "remove":
            out.pop(line.sku, None)
    return [{"sku": sku, "quantity": q} for sku, q in out.items()]


def cart_lines(cart: Iterable[Mapping[str, Any]]) -> list[CartLine]:
    return [CartLine(str(c["sku"]), Decimal(str(c["quantity"]))) for c in cart]


def quote_data(q: Quote, catalogue: Catalogue) -> dict[str, Any]:
    """A quote as an order's fields (amounts as text)."""
    return {
        "lines": [
            {
                "sku": line.sku,
                "name": line.name,
                "quantity": str(line.quantity),
                "unit": line.unit,
                "price": str(line.price),
                "tax_rate": str(line.tax_rate),
                "line_total": str(line.line_total),
            }
            for line in q.lines
        ],
        "subtotal": str(q.subtotal),
        "percent": str(q.percent),
        "discount": str(q.discount),
        "tax": str(q.tax),
        "total": str(q.total),
        "currency": q.currency,
        "locale": catalogue.locale,
        "tax_name": catalogue.tax_name,
        "business": catalogue.business,
    }


def confirmed(
    order: Mapping[str, Any], number: int, today: date, terms_days: int, at: str
) -> dict[str, Any]:
    """The draft placed: its number, the invoice's number and dates."""
    return {
        **order,
        "status": "confirmed",
        "number": number,
        "invoice": f"INV-{number}",
        "date": today.isoformat(),
        "due_date": (today + timedelta(days=terms_days)).isoformat(),
        "confirmed_at": at,
        "history": [*order.get("history", []), {"status": "confirmed", "at": at}],
    }


def moved(order: Mapping[str, Any], status: str, at: str, reason: str = "") -> dict[str, Any]:
    """The order at `status`; Refused when that is backwards or the order has ended. A move to
    the status it has is no move (the same order back)."""
    now = str(order["status"])
    if status not in STATUSES:
        raise Refused(f"unknown status {status!r} (one of {', '.join(STATUSES[1:])})")
    if status == now:
        return dict(order)
    if now in ("delivered", "cancelled"):
        raise Refused(f"order {order.get('number')} is {now}: it cannot become {status}")
    if status == "draft" or (status != "cancelled" and FLOW.index(status) < FLOW.index(now)):
        raise Refused(f"order {order.get('number')} is {now}: it cannot go back to {status}")
    step: dict[str, Any] = {"status": status, "at": at}
    if reason:
        step["reason"] = reason
    out = {**order, "status": status, "history": [*order.get("history", []), step]}
    if status == "cancelled":
        out["reason"] = reason
    return out


def public(order: Mapping[str, Any]) -> dict[str, Any]:
    """An order as the admin API shows it."""
    keys = (
        "number",
        "contact",
        "status",
        "lines",
        "subtotal",
        "percent",
        "discount",
        "tax",
        "total",
        "currency",
        "created_at",
        "confirmed_at",
        "invoice",
        "date",
        "due_date",
        "reason",
        "history",
    )
    out = {k: order.get(k) for k in keys}
    out["draft"] = order.get("draft")
    out["lines"] = [
        {k: line[k] for k in ("sku", "name", "quantity", "unit", "price", "line_total")}
        for line in order.get("lines", [])
    ]
    return out
