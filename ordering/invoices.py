"""Invoices and payments: what is paid and still owed on a placed order, the payments that made
it so, and the reminders an unpaid invoice gets. Pure functions over the order's mapping
(ordering.orders); the actions and the admin API store what they give.

Payments: an amount in the order's currency (no more decimals than it has), with the payer's
reference (a bank transfer's UTR, a receipt number). The same reference again counts once; an
amount above what is still owed is refused, as is any payment of a cancelled order.

Reminders: at REMIND_AT in the business's time zone, the day before the due date, the day after
it (overdue) and a week after it, each once; none once the invoice is paid or the order
cancelled, and none within 12 hours of the order being placed (payment terms of 0 or 1 day).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from .orders import Refused
from .orders import public as order_view

REMINDERS = (("due_soon", -1), ("overdue", 1), ("overdue_week", 7))  # days from the due date
REMIND_AT = time(10, 0)
PAID, PARTLY_PAID, UNPAID = "paid", "partly paid", "unpaid"
MAX_REFERENCE = 100
MAX_AMOUNT = Decimal(10) ** 15
AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)  # as text: digits, maybe a point and more
FIRST_AFTER = 12 * 3600.0  # a reminder this soon after the order was placed is not sent


class BadPayment(ValueError):
    """A payment that cannot be read: no amount, a negative one, too many decimals."""


def places(order: Mapping[str, Any]) -> int:
    """The decimals of the order's currency (its total is written with exactly those)."""
    exponent = Decimal(str(order["total"])).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def paid(order: Mapping[str, Any]) -> Decimal:
    """The sum of the payments, with the currency's decimals ("0.00" before any)."""
    total = sum((Decimal(p["amount"]) for p in order.get("payments", [])), Decimal(0))
    return total.quantize(Decimal(1).scaleb(-places(order)))


def balance(order: Mapping[str, Any]) -> Decimal:
    return Decimal(str(order["total"])) - paid(order)


def payment_status(order: Mapping[str, Any]) -> str:
    if balance(order) <= 0:
        return PAID
    return PARTLY_PAID if order.get("payments") else UNPAID


def amount_of(value: Any, order: Mapping[str, Any]) -> Decimal:
    """A payment's amount as written ("5000", "2292.50", 100): positive, finite, with no more
    decimals than the currency has."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadPayment('amount: a decimal number, like "2500.00"')
    text = str(value).strip()
    if isinstance(value, str) and not AMOUNT.fullmatch(text):
        raise BadPayment(f'amount: {text[:30]!r} is not a decimal number like "2500.00"')
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise BadPayment(f"amount: {text[:30]!r} is not a number") from None
    if not amount.is_finite() or amount <= 0:
        raise BadPayment("amount: a positive number")
    if amount >= MAX_AMOUNT:
        raise BadPayment("amount: too large")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places(order):
        raise BadPayment(f"amount: at most {places(order)} decimals in {order['currency']}")
    return amount.quantize(Decimal(1).scaleb(-places(order)))  # "5000" is kept as "5000.00"


def reference_of(value: Any) -> str:
    """The payer's reference, one line of at most MAX_REFERENCE characters."""
    if not isinstance(value, str):
        raise BadPayment('reference: text, like "UTR 402913"')
    text = " ".join("".join(c if c.isprintable() else " " for c in value).split())
    if not text:
        raise BadPayment("reference: the payment's reference (a transfer's UTR, a receipt)")
    if len(text) > MAX_REFERENCE:
        raise BadPayment(f"reference: at most {MAX_REFERENCE} characters")
    return text


def payment_of(order: Mapping[str, Any], reference: str) -> dict[str, Any] | None:
    """The payment made with `reference`, written in any case ("utr 1" is "UTR 1")."""
    wanted = reference.casefold()
    return next((p for p in order.get("payments", []) if p["reference"].casefold() == wanted), None)


def with_payment(
    order: Mapping[str, Any], amount: Decimal, reference: str, at: str
) -> tuple[dict[str, Any], bool]:
    """The order with the payment counted, and whether it is new: the same reference again is
    the same payment (the order back unchanged), unless its amount differs (Refused)."""
    p = payment_of(order, reference)
    if p is not None:
        if Decimal(p["amount"]) != amount:
            raise Refused(
                f"reference {reference!r} was already paid with {p['amount']}, not {amount}"
            )
        return dict(order), False
    if order["status"] == "cancelled":
        raise Refused(f"order {order['number']} is cancelled: it takes no payment")
    owed = balance(order)
    if amount > owed:
        raise Refused(f"{amount} is more than the {owed} still owed on {order['invoice']}")
    payment = {"amount": str(amount), "reference": reference, "at": at}
    payments = [*order.get("payments", []), payment]
    out = {**order, "payments": payments}
    out["paid"] = str(paid(out))
    out["balance"] = str(balance(out))
    out["payment_status"] = payment_status(out)
    return out, True


def schedule(order: Mapping[str, Any], zone: ZoneInfo) -> list[tuple[str, float]]:
    """Every reminder the invoice gets, by name and Unix time, soonest first: none when it is
    paid or the order cancelled; only those at least FIRST_AFTER after it was placed."""
    if order["status"] == "cancelled" or balance(order) <= 0:
        return []
    due = date.fromisoformat(str(order["due_date"]))
    placed = datetime.fromisoformat(str(order["confirmed_at"])).timestamp()
    out = []
    for name, days in REMINDERS:
        at = datetime.combine(due + timedelta(days=days), REMIND_AT, zone).timestamp()
        if at >= placed + FIRST_AFTER:
            out.append((name, at))
    return out


def next_reminder(order: Mapping[str, Any], zone: ZoneInfo) -> float | None:
    """When the next reminder not yet sent falls due (the order record's `due`), or None."""
    sent = set(order.get("reminded", []))
    return next((at for name, at in schedule(order, zone) if name not in sent), None)


def reminder_now(
    order: Mapping[str, Any], zone: ZoneInfo, now: float
) -> tuple[str | None, dict[str, Any], float | None]:
    """The reminder to send at `now` (None: none), the order with it (and any it passed over)
    counted as sent, and when the next one falls due. When several have fallen due (the engine
    was down), only the latest goes: "due tomorrow" is not sent after "overdue"."""
    sent = set(order.get("reminded", []))
    pending = [(name, at) for name, at in schedule(order, zone) if name not in sent]
    ready = [name for name, at in pending if at <= now]
    later = [at for _, at in pending if at > now]
    after = {**order, "reminded": [n for n, _ in REMINDERS if n in sent or n in ready]}
    return (ready[-1] if ready else None), after, (later[0] if later else None)


def _zero(order: Mapping[str, Any]) -> Decimal:
    return Decimal(0).quantize(Decimal(1).scaleb(-places(order)))


def public(order: Mapping[str, Any]) -> dict[str, Any]:
    """An invoice as the admin API shows it."""
    status = "cancelled" if order["status"] == "cancelled" else payment_status(order)
    return {
        "invoice": order["invoice"],
        "number": order["number"],
        "contact": order.get("contact"),
        "status": status,
        "order_status": order["status"],
        "date": order["date"],
        "due_date": order["due_date"],
        "currency": order["currency"],
        "lines": order_view(order)["lines"],
        "subtotal": order["subtotal"],
        "percent": order["percent"],
        "discount": order["discount"],
        "tax_name": order.get("tax_name"),
        "tax": order["tax"],
        "total": order["total"],
        "paid": str(paid(order)),
        # a cancelled order owes nothing (what was paid on it is the business's to refund)
        "balance": str(max(balance(order), Decimal(0)) if status != "cancelled" else _zero(order)),
        "payments": list(order.get("payments", [])),
        "reminded": list(order.get("reminded", [])),
    }
