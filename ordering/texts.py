"""What the customer reads: amounts and quantities in the catalogue's currency and locale
(Babel), the summary of a cart, the invoice and an order's status."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from babel.numbers import format_currency, format_decimal

from . import invoices
from .pricing import Quote

STATUS_WORDS = {
    "draft": "not placed yet",
    "confirmed": "confirmed",
    "processing": "being prepared",
    "shipped": "on its way",
    "delivered": "delivered",
    "cancelled": "cancelled",
}


def money(amount: Decimal | str, currency: str, locale: str) -> str:
    return str(format_currency(Decimal(amount), currency, locale=locale))


def quantity(amount: Decimal | str, locale: str) -> str:
    return str(format_decimal(Decimal(amount).normalize(), locale=locale))


def summary(q: Quote, tax_name: str, locale: str) -> str:
    """The cart as the customer confirms it: a line per item, then subtotal, discount, tax and
    total."""

    def m(amount: Decimal) -> str:
        return money(amount, q.currency, locale)

    out = ["*Your order*"]
    for line in q.lines:
        out.append(
            f"• {line.name}: {quantity(line.quantity, locale)} {line.unit} × {m(line.price)}"
            f" = {m(line.line_total)}"
        )
    out.append("")
    out.append(f"Subtotal: {m(q.subtotal)}")
    if q.discount:
        out.append(f"Discount ({quantity(q.percent, locale)}%): −{m(q.discount)}")
    out.append(f"{tax_name}: {m(q.tax)}")
    out.append(f"*Total: {m(q.total)}*")
    return "\n".join(out)


def invoice(order: Mapping[str, Any]) -> str:
    """The invoice as a WhatsApp text: number, lines, discount, tax, total and due date."""
    cur, loc = order["currency"], order["locale"]

    def m(amount: str) -> str:
        return money(amount, cur, loc)

    out = [f"*Invoice {order['invoice']}* for order {order['number']}", f"Date: {order['date']}"]
    for line in order["lines"]:
        out.append(
            f"• {line['name']}: {quantity(line['quantity'], loc)} {line['unit']}"
            f" × {m(line['price'])} = {m(line['line_total'])}"
        )
    out.append(f"Subtotal: {m(order['subtotal'])}")
    if Decimal(order["discount"]):
        out.append(f"Discount ({quantity(order['percent'], loc)}%): −{m(order['discount'])}")
    out.append(f"{order['tax_name']}: {m(order['tax'])}")
    out.append(f"*Total: {m(order['total'])}*")
    out.append(f"Due by {order['due_date']}")
    return "\n".join(out)


def status_line(order: Mapping[str, Any]) -> str:
    words = STATUS_WORDS.get(order["status"], order["status"])
    total = money(order["total"], order["currency"], order["locale"])
    text = f"Order {order['number']} ({total}) is {words}."
    reason = order.get("reason")
    if order["status"] == "cancelled" and reason:
        text += f" Reason: {reason}"
    return text


def receipt(order: Mapping[str, Any], amount: Decimal | str, reference: str) -> str:
    """The customer's receipt for one payment, with what is still owed."""
    cur, loc = order["currency"], order["locale"]
    text = (
        f"Thank you! We received {money(amount, cur, loc)} for invoice {order['invoice']}"
        f" (order {order['number']}, reference {reference})."
    )
    left = invoices.balance(order)
    if left > 0:
        return f"{text} Still to pay: {money(left, cur, loc)}."
    return f"{text} It is paid in full."


def reminder(order: Mapping[str, Any], which: str, owed: Decimal | str) -> str:
    """A payment reminder: `which` is due_soon, overdue or overdue_week (ordering.invoices)."""
    left = money(owed, order["currency"], order["locale"])
    what = f"invoice {order['invoice']} for order {order['number']}"
    if which == "due_soon":
        return f"A reminder: {what}, {left} to pay, is due on {order['due_date']}."
    return (
        f"{what[0].upper()}{what[1:]} was due on {order['due_date']}; {left} is still to pay."
        " Reply here if you need help with it."
    )
