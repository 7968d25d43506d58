"""Quotes: the arithmetic of an order, in Decimal, to the currency's smallest unit.

line total = quantity x price (rounded half up to the currency's places: only a fractional
             quantity can need it)
subtotal   = the sum of the line totals
discount   = subtotal x percent / 100, rounded half up, from the highest rule whose
             min_subtotal <= subtotal
tax        = the sum over lines of line total x (1 - percent / 100) x tax rate, rounded half
             up once, at the end
total      = subtotal - discount + tax
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from .catalogue import Catalogue, Discount


@dataclass(frozen=True, slots=True)
class CartLine:
    sku: str
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class QuoteLine:
    sku: str
    name: str
    quantity: Decimal
    unit: str
    price: Decimal
    tax_rate: Decimal
    line_total: Decimal


@dataclass(frozen=True, slots=True)
class Quote:
    lines: tuple[QuoteLine, ...]
    subtotal: Decimal
    percent: Decimal  # the discount's percent (0: none)
    discount: Decimal
    tax: Decimal
    total: Decimal
    currency: str


def rounded(amount: Decimal, places: int) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def discount_rule(subtotal: Decimal, rules: Iterable[Discount]) -> Discount | None:
    """The highest rule whose min_subtotal <= subtotal."""
    fitting = [d for d in rules if d.min_subtotal <= subtotal]
    return max(fitting, key=lambda d: d.min_subtotal) if fitting else None


def quote(cart: Iterable[CartLine], catalogue: Catalogue) -> Quote:
    """The quote of `cart` at the catalogue's prices; a sku the catalogue no longer has is left
    out (KeyError is never raised for it)."""
    places = catalogue.places
    lines = []
    for c in cart:
        item = catalogue.by_sku.get(c.sku)
        if item is None:
            continue
        total = rounded(c.quantity * item.price, places)
        lines.append(
            QuoteLine(item.sku, item.name, c.quantity, item.unit, item.price, item.tax_rate, total)
        )
    zero = rounded(Decimal(0), places)
    subtotal = sum((line.line_total for line in lines), zero)
    rule = discount_rule(subtotal, catalogue.discounts) if lines else None
    percent = rule.percent if rule is not None else Decimal(0)
    discount = rounded(subtotal * percent / 100, places)
    keep = 1 - percent / 100
    tax = rounded(sum((line.line_total * keep * line.tax_rate for line in lines), zero), places)
    return Quote(
        tuple(lines),
        subtotal,
        percent,
        discount,
        tax,
        subtotal - discount + tax,
        catalogue.currency,
    )
