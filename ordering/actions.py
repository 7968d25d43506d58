"""The order flow's actions, bound to the catalogue beside the flows (`data/catalogue.yaml`).
A flows folder uses them by naming the pack in its actions.py:

    from ordering.actions import ordering

| action         | with                        | gives                                          |
| -------------- | --------------------------- | ---------------------------------------------- |
| order.read     | text, draft                 | the draft after the text: draft, summary, ...  |
| order.add      | draft, sku, quantity        | the same, after one item chosen by the customer|
| order.place    | draft                       | number, invoice, invoice_text, again           |
| order.cancel   | draft, reason               | status                                         |
| order.track    | number                      | found, number, status, text                    |
| order.recent   | (nothing)                   | orders: [{number, title, description}], count  |
| order.pay      | number, amount, reference   | status, paid, balance, receipt, again          |

A draft is a record of kind "draft" (its key is made from the call that started it, so a replay
finds the same one); placing it writes, in one transaction, the draft as placed, the order (kind
"order", key its number) and the counter of order numbers, each at the version it was read at.
A replay after a crash, a re-delivered tap or a second tap on Confirm finds the draft placed and
gives the same order back (`again: true`).

With a PDF renderer (`Ordering(pdf=...)`, the adapters' InvoicePdf), placing also writes the
invoice as MEDIA_DIR/invoices/INV-<number>-<draft>.pdf and gives its name (`invoice_file`) for a
`document:` message. An order's record is due (Record.due) at its next payment reminder; the
engine hands it to `remind` then, which tells the customer (ordering.invoices has the rules).

`order.pay` records a payment as the admin API's POST /api/invoices/{number}/payments does,
but sends no receipt (it gives its text, for the flow to say): call it from a flow only with
what your payment provider confirmed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.actions import ActionContext, ActionFailed, DueContext, Fn, Pack, WhenDue
from engine.errors import Problem
from engine.logs import mask
from engine.ports import Record, Records

from . import invoices, texts
from .catalogue import FILE, Catalogue, CatalogueError, load_catalogue
from .orders import FIRST_NUMBER, Refused, apply_lines, cart_lines, confirmed, quote_data
from .parsing import MAX_LINES, MAX_QUANTITY, Line, read_order
from .pricing import Quote, quote

log = logging.getLogger(__name__)

DRAFT, ORDER, COUNTER = "draft", "order", "counter"
TRIES = 10  # writes that lost a race are read again and retried this often
INVOICES = "invoices"  # MEDIA_DIR's folder of invoice PDFs
# templates.yaml: what outside the 24-hour window says a reminder or a receipt
TEMPLATES = {
    "due_soon": "payment_reminder",
    "overdue": "payment_overdue",
    "overdue_week": "payment_overdue",
    "receipt": "payment_received",
    "status": "order_update",  # the admin API's status moves
}

Render = Callable[[dict[str, Any]], bytes]  # an order's invoice as a PDF document


class Ordering(Pack):
    """The pack: `load` reads the catalogue and gives the actions bound to it. `pdf` renders an
    order's invoice (adapters.invoice_pdf.InvoicePdf); without one no PDF is made."""

    names = (
        "order.read",
        "order.add",
        "order.place",
        "order.cancel",
        "order.track",
        "order.recent",
        "order.pay",
    )
    templates = tuple(sorted(set(TEMPLATES.values())))

    def __init__(self, pdf: Render | None = None) -> None:
        self.pdf = pdf

    def load(
        self, folder: Path, zone: ZoneInfo | None, media: Path | None = None
    ) -> tuple[dict[str, Fn | WhenDue], list[Problem]]:
        path = folder / FILE
        if not path.is_file():
            return {}, [Problem(str(path), 1, f"the order actions need a catalogue at {FILE}")]
        try:
            catalogue = load_catalogue(path)
        except CatalogueError as e:
            return {}, e.problems
        check = getattr(self.pdf, "problem", None)
        problem = check() if callable(check) else None
        if problem:  # the flow would promise a PDF it cannot send
            return {}, [Problem(str(folder / "actions.py"), 1, str(problem))]
        bound = OrderActions(catalogue, zone or ZoneInfo("UTC"), self.pdf, media)
        return bound.actions(), []


ordering = Ordering()


class OrderActions:
    def __init__(
        self,
        catalogue: Catalogue,
        zone: ZoneInfo,
        pdf: Render | None = None,
        media: Path | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.zone = zone
        self.pdf = pdf
        self.media = media

    def actions(self) -> dict[str, Fn | WhenDue]:
        out: dict[str, Callable[..., Any] | WhenDue] = {
            "order.read": self.read,
            "order.add": self.add,
            "order.place": self.place,
            "order.cancel": self.cancel,
            "order.track": self.track,
            "order.recent": self.recent,
            "order.pay": self.pay,
            "order.remind": WhenDue(ORDER, self.remind),
        }
        return out

    # --- the draft -------------------------------------------------------------------------

    async def read(self, ctx: ActionContext, text: str, draft: str = "") -> dict[str, Any]:
        """The draft after what the customer wrote (a new one when `draft` is not open)."""
        # Scoring a line against a large catalogue takes a while (see the README's limits):
        # off the event loop, so other conversations go on meanwhile.
        lines = await asyncio.to_thread(read_order, str(text), self.catalogue)
        return await self._change(ctx, str(draft or ""), lines)

    async def add(
        self, ctx: ActionContext, draft: str, sku: str, quantity: Any = 1
    ) -> dict[str, Any]:
        """One item the customer picked (from the candidates of an ambiguous line)."""
        if sku not in self.catalogue.by_sku:
            raise ActionFailed(f"no item {sku!r} in the catalogue", "not_found")
        try:
            amount = Decimal(str(quantity))
        except InvalidOperation:
            amount = Decimal(1)
        if not 0 < amount <= MAX_QUANTITY:
            amount = Decimal(1)
        return await self._change(ctx, str(draft or ""), [Line("item", sku, sku, amount)])

    async def _change(self, ctx: ActionContext, draft: str, lines: list[Line]) -> dict[str, Any]:
        store = _records(ctx)
        for _ in range(TRIES):
            found = await self._open_draft(store, ctx, draft)
            cart = found.data.get("cart", []) if found.version else []
            cart = apply_lines(cart, lines)
            q = quote(cart_lines(cart), self.catalogue)
            data = {**found.data, "cart": cart, **quote_data(q, self.catalogue)}
            if await store.put_records([replace(found, data=data)]):
                return self._view(found.key, q, lines)
        raise ActionFailed("the draft kept changing under this call", "conflict")

    async def _open_draft(self, store: Records, ctx: ActionContext, draft: str) -> Record:
        """The contact's open draft `draft`, or a new one keyed by this call (the same one again
        on a replay of the call)."""
        if draft:
            found = await store.record(DRAFT, draft)
            if found is not None and found.contact == ctx.contact and found.status == DRAFT:
                return found
        key = "d" + ctx.key[:23]
        found = await store.record(DRAFT, key)
        if found is not None and found.contact != ctx.contact:
            raise ActionFailed("a draft of another contact has this call's key", "conflict")
        if found is not None:
            return found
        at = self._iso(ctx.now)
        data = {"draft": key, "contact": ctx.contact, "status": DRAFT, "created_at": at}
        return Record(DRAFT, key, data, ctx.contact, DRAFT, at=ctx.now)

    def _view(self, key: str, q: Quote, lines: list[Line]) -> dict[str, Any]:
        """What the flow gets back: the draft's key, its summary, and what could not be read."""
        unknown = [line.text for line in lines if line.kind == "unknown"]
        bad = [line.text for line in lines if line.kind == "bad"]
        notes = []
        if any(line.kind == "skipped" for line in lines):
            notes.append(f"I read the first {MAX_LINES} lines only.")
        if unknown:
            notes.append(f"I couldn't find: {', '.join(unknown)}.")
        if bad:
            notes.append(f"That quantity can't be ordered: {', '.join(bad)}.")
        by_sku = self.catalogue.by_sku
        ambiguous = [
            {
                "text": line.text,
                "quantity": line.quantity,
                "options": [{"sku": s, "name": by_sku[s].name} for s in line.candidates],
                "question": f'Which one did you mean by "{line.text}"?',
            }
            for line in lines
            if line.kind == "ambiguous"
        ]
        count = len(q.lines)
        summary = texts.summary(q, self.catalogue.tax_name, self.catalogue.locale)
        return {
            "draft": key,
            "count": count,
            "empty": count == 0,
            "summary": summary if count else "Your cart is empty.",
            "total": str(q.total),
            "unknown": unknown,
            "bad": bad,
            "ambiguous": ambiguous,
            "note": " ".join(notes),
            "understood": sum(1 for line in lines if line.kind in ("item", "remove")),
        }

    # --- placing ---------------------------------------------------------------------------

    async def place(self, ctx: ActionContext, draft: str) -> dict[str, Any]:
        """The draft placed as an order, once: a second call gives the same order back."""
        store = _records(ctx)
        for _ in range(TRIES):
            found = await store.record(DRAFT, str(draft))
            if found is None or found.contact != ctx.contact:
                raise ActionFailed("no such draft", "not_found")
            if found.status == "placed":
                order = await store.record(ORDER, str(found.data["number"]))
                assert order is not None
                return await self._placed(order.data, again=True)
            if found.status != DRAFT:
                raise ActionFailed(f"the draft is {found.status}", found.status)
            if not found.data.get("lines") or Decimal(found.data["total"]) <= 0:
                raise ActionFailed("the cart is empty or costs nothing", "empty")
            counter = await store.record(COUNTER, ORDER)
            number = (int(counter.data["last"]) if counter else FIRST_NUMBER - 1) + 1
            at = self._iso(ctx.now)
            today = datetime.fromtimestamp(ctx.now, self.zone).date()
            data = confirmed(found.data, number, today, self.catalogue.payment_terms_days, at)
            counted = counter or Record(COUNTER, ORDER, {}, at=ctx.now)
            writes = [
                replace(found, status="placed", data={**found.data, "number": number}),
                replace(counted, data={"last": number}),
                Record(
                    ORDER,
                    str(number),
                    data,
                    ctx.contact,
                    "confirmed",
                    due=invoices.next_reminder(data, self.zone),
                    at=ctx.now,
                ),
            ]
            if await store.put_records(writes):
                log.info("order %d placed for %s: %s", number, mask(ctx.contact), data["total"])
                return await self._placed(data, again=False)
        raise ActionFailed("orders kept being placed under this call", "conflict")

    async def _placed(self, order: dict[str, Any], *, again: bool) -> dict[str, Any]:
        return {
            "number": order["number"],
            "invoice": order["invoice"],
            "total": texts.money(order["total"], order["currency"], order["locale"]),
            "due_date": order["due_date"],
            "invoice_text": texts.invoice(order),
            "invoice_file": await self._pdf(order),
            "status": order["status"],
            "again": again,
        }

    async def _pdf(self, order: dict[str, Any]) -> str:
        """The invoice's PDF in MEDIA_DIR, by the name a `document:` message takes; "" without
        a renderer or when it cannot be written (the order stands: the PDF is in the admin API
        all the same). Written each time, whole, under a name of this order's draft as well as
        its number: a file left by another store's INV-1001 (a new database, a second engine on
        the same MEDIA_DIR) is never sent for this one."""
        if self.pdf is None or self.media is None:
            return ""
        name = f"{INVOICES}/{order['invoice']}-{order.get('draft') or 'order'}.pdf"
        try:
            await asyncio.to_thread(_write, self.media / name, self.pdf, order)
        except Exception as e:
            log.error("the PDF of invoice %s could not be written: %r", order["invoice"], e)
            return ""
        return name

    async def cancel(self, ctx: ActionContext, draft: str, reason: str = "") -> dict[str, Any]:
        """An open draft cancelled (abandoned, or the customer said so); a placed one is left."""
        store = _records(ctx)
        for _ in range(TRIES):
            found = await store.record(DRAFT, str(draft))
            if found is None or found.contact != ctx.contact:
                return {"status": "none"}
            if found.status != DRAFT:
                return {"status": found.status}
            data = {**found.data, "status": "cancelled", "reason": str(reason)}
            if await store.put_records([replace(found, status="cancelled", data=data)]):
                return {"status": "cancelled"}
        raise ActionFailed("the draft kept changing under this call", "conflict")

    # --- looking up ------------------------------------------------------------------------

    async def track(self, ctx: ActionContext, number: Any) -> dict[str, Any]:
        """The status of one of the contact's orders (another contact's is not found)."""
        key = str(number).strip().lstrip("#")
        found = await _records(ctx).record(ORDER, key) if key.isdigit() else None
        if found is None or found.contact != ctx.contact:
            return {"found": False, "number": key, "status": "", "text": ""}
        return {
            "found": True,
            "number": found.data["number"],
            "status": found.status,
            "text": texts.status_line(found.data),
        }

    async def recent(self, ctx: ActionContext, limit: int = 9) -> dict[str, Any]:
        """The contact's latest orders, as rows for a list."""
        found = await _records(ctx).records(ORDER, contact=ctx.contact, limit=int(limit))
        rows = [
            {
                "number": str(r.data["number"]),
                "title": f"Order {r.data['number']}",
                "description": texts.status_line(r.data)[:72],
            }
            for r in found
        ]
        return {"orders": rows, "count": len(rows)}

    # --- payments --------------------------------------------------------------------------

    async def pay(
        self, ctx: ActionContext, number: Any, amount: Any, reference: str
    ) -> dict[str, Any]:
        """A payment of one of the contact's invoices (the same reference again: once)."""
        key = str(number).strip().lstrip("#").upper().removeprefix("INV-")
        found = await _records(ctx).record(ORDER, key) if key.isdigit() else None
        if found is None or found.contact != ctx.contact:
            raise ActionFailed(f"no order {key[:20]!r} of this contact", "not_found")
        try:
            order, new = await pay(
                _records(ctx), key, amount, reference, now=ctx.now, zone=self.zone
            )
        except (invoices.BadPayment, Refused) as e:
            raise ActionFailed(str(e), "refused") from None
        return {
            "status": invoices.payment_status(order),
            "paid": order["paid"],
            "balance": order["balance"],
            "receipt": texts.receipt(
                order, _paid_with(order, reference), invoices.reference_of(reference)
            ),
            "again": not new,
        }

    async def remind(self, ctx: DueContext, record: Record) -> None:
        """An order whose next payment reminder has come: tell the customer, then record it
        sent and when the next one is (a crash in between sends it again: the same message
        by its name, which the outbox sends once)."""
        for _ in range(TRIES):
            which, after, due = invoices.reminder_now(record.data, self.zone, ctx.now)
            if which is not None:
                order = record.data
                owed = invoices.balance(order)
                params = {
                    "invoice": str(order["invoice"]),
                    "number": str(order["number"]),
                    "amount": texts.money(owed, order["currency"], order["locale"]),
                    "due_date": str(order["due_date"]),
                }
                text = texts.reminder(order, which, owed)
                ident = f"remind:{order['number']}:{which}"
                await ctx.notify(record.contact, ident, text, TEMPLATES[which], params)
            if await ctx.records.put_records([replace(record, data=after, due=due)]):
                return
            again = await ctx.records.record(ORDER, record.key)
            if again is None:
                return
            record = again
        raise RuntimeError(f"order {record.key} kept changing under its reminder")

    def _iso(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).astimezone(self.zone).isoformat(timespec="seconds")


async def pay(
    store: Records, number: str, amount: Any, reference: Any, *, now: float, zone: ZoneInfo
) -> tuple[dict[str, Any], bool]:
    """Record a payment of order `number`'s invoice: the order after it, and whether it is new
    (the same reference again is not). Raise LookupError (no such order), BadPayment (the
    amount or reference cannot be read) or Refused (more than is owed, a cancelled order, a
    reference already used for another amount). Paid in full: no more reminders."""
    for _ in range(TRIES):
        found = await store.record(ORDER, number)
        if found is None:
            raise LookupError(number)
        value = invoices.amount_of(amount, found.data)
        ref = invoices.reference_of(reference)
        at = datetime.fromtimestamp(now, UTC).astimezone(zone).isoformat(timespec="seconds")
        after, new = invoices.with_payment(found.data, value, ref, at)
        if not new:
            return after, False
        due = invoices.next_reminder(after, zone)
        if await store.put_records([replace(found, data=after, due=due)]):
            log.info("order %s: %s paid (%s)", number, value, after["payment_status"])
            return after, True
    raise Refused(f"order {number} kept changing; try again")


def _paid_with(order: dict[str, Any], reference: str) -> str:
    payment = invoices.payment_of(order, invoices.reference_of(reference))
    assert payment is not None  # pay() recorded it, now or before
    return str(payment["amount"])


def _write(path: Path, render: Render, order: dict[str, Any]) -> None:
    """The PDF written whole or not at all (a reader never finds half of it)."""
    data = render(order)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
    part.replace(path)


def _records(ctx: ActionContext) -> Records:
    if ctx.records is None:
        raise ActionFailed("this engine keeps no records", "unavailable")
    return ctx.records
