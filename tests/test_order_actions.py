"""The order actions on every store backend: drafts, an order placed exactly once however often
the call is replayed or raced, cancel, track; each contact sees only its own orders."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.actions import ActionContext, ActionFailed, DueContext
from engine.memstore import MemoryStore
from engine.ports import Store
from ordering.actions import OrderActions, ordering, pay
from ordering.catalogue import load_catalogue
from ordering.invoices import BadPayment, with_payment
from ordering.orders import Refused
from tests.test_store import store

__all__ = ["store"]

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_796_630_400.0  # 2026-12-07T10:00:00Z


@pytest.fixture
def orders() -> OrderActions:
    catalogue = load_catalogue(ROOT / "flows" / "data" / "catalogue.yaml")
    return OrderActions(catalogue, ZoneInfo("Asia/Kolkata"))


def ctx(store: Store, key: str = "k" * 32, contact: str = "n:1", attempt: int = 1) -> ActionContext:
    return ActionContext(key, contact, "order", "s", NOW + 10, attempt, NOW, store)


async def test_a_draft_is_kept_and_changed_by_what_the_customer_writes(
    store: Store, orders: OrderActions
) -> None:
    first = await orders.read(ctx(store), "Cement x 100, sand 20 bags")
    assert (first["count"], first["total"], first["note"]) == (2, "7292.50", "")
    again = await orders.read(ctx(store, attempt=2), "Cement x 100, sand 20 bags")  # a replay
    assert again == first
    draft = first["draft"]
    edited = await orders.read(ctx(store, key="e" * 32), "remove sand\nunobtainium", draft)
    assert (edited["draft"], edited["count"], edited["total"]) == (draft, 1, "6400.00")
    assert edited["unknown"] == ["unobtainium"]
    listed = await store.records("draft", status="draft")
    assert [r.key for r in listed] == [draft]
    assert [line["sku"] for line in listed[0].data["lines"]] == ["CEM-OPC53"]


async def test_an_order_is_placed_once_however_often_confirm_arrives(
    store: Store, orders: OrderActions
) -> None:
    draft = (await orders.read(ctx(store), "cement 200, tmt bar 12mm 10"))["draft"]
    # two calls racing (a replay after a restart beside the first), then a third later
    results = await asyncio.gather(
        orders.place(ctx(store, key="p" * 32), draft),
        orders.place(ctx(store, key="p" * 32, attempt=2), draft),
    )
    later = await orders.place(ctx(store, key="q" * 32), draft)
    numbers = {r["number"] for r in [*results, later]}
    assert numbers == {1001}
    assert sorted(r["again"] for r in results) == [False, True] and later["again"]
    placed = await store.records("order")
    assert len(placed) == 1
    order = placed[0].data
    assert (order["subtotal"], order["discount"], order["tax"], order["total"]) == (
        "14120.00",
        "706.00",
        "3364.52",
        "16778.52",
    )
    assert (order["date"], order["due_date"], order["invoice"]) == (
        "2026-12-07",
        "2026-12-22",
        "INV-1001",
    )
    assert "Due by 2026-12-22" in later["invoice_text"]
    # the next draft gets the next number; a change of a placed draft starts a new draft
    other = await orders.read(ctx(store, key="r" * 32), "sand 1", draft)
    assert other["draft"] != draft
    assert (await orders.place(ctx(store, key="s" * 32), other["draft"]))["number"] == 1002


async def test_orders_placed_at_once_by_many_contacts_get_distinct_numbers(
    store: Store, orders: OrderActions
) -> None:
    drafts = [
        (c, (await orders.read(ctx(store, key=f"{c}" * 32, contact=f"n:{c}"), "sand 2"))["draft"])
        for c in range(6)
    ]
    placed = await asyncio.gather(
        *(orders.place(ctx(store, key="p" * 32, contact=f"n:{c}"), d) for c, d in drafts)
    )
    assert sorted(p["number"] for p in placed) == list(range(1001, 1007))


async def test_cancel_and_track(store: Store, orders: OrderActions) -> None:
    draft = (await orders.read(ctx(store), "sand 2"))["draft"]
    assert await orders.cancel(ctx(store), draft, "changed my mind") == {"status": "cancelled"}
    with pytest.raises(ActionFailed) as e:
        await orders.place(ctx(store), draft)
    assert e.value.kind == "cancelled"
    kept = await orders.read(ctx(store, key="t" * 32), "sand 3")
    placed = await orders.place(ctx(store), kept["draft"])
    assert await orders.cancel(ctx(store), kept["draft"]) == {"status": "placed"}  # too late
    mine = await orders.track(ctx(store), f"#{placed['number']}")
    assert mine["found"] and mine["text"] == "Order 1001 (₹133.88) is confirmed."
    theirs = await orders.track(ctx(store, contact="n:2"), "1001")
    assert theirs["found"] is False  # another contact's order is not shown
    with pytest.raises(ActionFailed):
        await orders.place(ctx(store, contact="n:2"), kept["draft"])
    recent = await orders.recent(ctx(store))
    assert recent["orders"] == [
        {
            "number": "1001",
            "title": "Order 1001",
            "description": "Order 1001 (₹133.88) is confirmed.",
        }
    ]
    assert (await orders.recent(ctx(store, contact="n:2")))["count"] == 0


def test_the_pack_reports_a_bad_catalogue_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "catalogue.yaml").write_text("currency: XXQ\nitems: []\n")
    fns, problems = ordering.load(tmp_path, None)
    assert fns == {}
    assert next((p.line, p.message) for p in problems) == (
        1,
        "currency: 'XXQ' is not an ISO 4217 code",
    )
    fns, problems = ordering.load(tmp_path / "nowhere", None)
    assert "need a catalogue at data/catalogue.yaml" in problems[0].message


def test_validate_shows_the_catalogue_problem(tmp_path: Path) -> None:
    import shutil

    from engine.flows import validate_path

    shutil.copytree(ROOT / "flows", tmp_path / "flows", ignore=shutil.ignore_patterns("tests"))
    path = tmp_path / "flows" / "data" / "catalogue.yaml"
    path.write_text(path.read_text().replace('price: "42.50"', 'price: "42.5.0"'))
    problems: list[Any] = validate_path(tmp_path / "flows")
    assert [
        (p.file.endswith("catalogue.yaml"), "'42.5.0' is not a number" in p.message)
        for p in problems
    ] == [(True, True)]


# --- invoices: payments and reminders, on every backend ------------------------------------------

ZONE = ZoneInfo("Asia/Kolkata")


async def placed(
    store: Store, orders: OrderActions, text: str = "Cement x 100, sand 20 bags"
) -> int:
    draft = (await orders.read(ctx(store), text))["draft"]
    return int((await orders.place(ctx(store, key="p" * 32), draft))["number"])


async def test_payments_count_once_each_and_never_past_the_total(
    store: Store, orders: OrderActions
) -> None:
    number = await placed(store, orders)  # 7292.50
    first = await store.record("order", str(number))
    assert first is not None and first.due is not None  # the first reminder is its due time
    # eight payments at once: four with one reference (counted once), four others of 1000
    refs = ["UTR-A"] * 4 + ["UTR-B", "UTR-C", "UTR-D", "UTR-E"]
    results = await asyncio.gather(
        *(pay(store, str(number), "1000", r, now=NOW, zone=ZONE) for r in refs)
    )
    assert sum(new for _order, new in results) == 5
    order = await store.record("order", str(number))
    assert order is not None
    assert sorted(p["reference"] for p in order.data["payments"]) == [
        "UTR-A",
        "UTR-B",
        "UTR-C",
        "UTR-D",
        "UTR-E",
    ]
    assert (order.data["paid"], order.data["balance"]) == ("5000.00", "2292.50")
    assert order.data["payment_status"] == "partly paid" and order.due == first.due
    with pytest.raises(Refused, match=r"more than the 2292\.50 still owed"):
        await pay(store, str(number), "2292.51", "UTR-F", now=NOW, zone=ZONE)
    with pytest.raises(Refused, match="already paid with 1000"):
        await pay(store, str(number), "999", "UTR-A", now=NOW, zone=ZONE)
    with pytest.raises(BadPayment):
        await pay(store, str(number), "0.001", "UTR-G", now=NOW, zone=ZONE)
    with pytest.raises(LookupError):
        await pay(store, "999999", "1", "UTR-H", now=NOW, zone=ZONE)
    done, new = await pay(store, str(number), "2292.50", "UTR-F", now=NOW, zone=ZONE)
    assert (new, done["payment_status"], done["balance"]) == (True, "paid", "0.00")
    after = await store.record("order", str(number))
    assert after is not None and after.due is None  # paid: nothing more is due
    assert await store.due_records("order", NOW + 400 * 86400, 10) == []


class Told:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, str | None, dict[str, str]]] = []

    async def __call__(
        self, contact: str, ident: str, text: str, template: str | None, params: Any
    ) -> None:
        self.sent.append((contact, ident, text, template, dict(params)))


async def remind_at(store: Store, orders: OrderActions, now: float, told: Told) -> None:
    for record in await store.due_records("order", now, 10):
        await orders.remind(DueContext(now=now, records=store, notify=told), record)


async def test_reminders_fall_due_once_each_and_stop_when_paid(
    store: Store, orders: OrderActions
) -> None:
    number = await placed(store, orders)  # due 2026-12-22; 10:00 in Kolkata is 04:30Z
    day_before = datetime(2026, 12, 21, 10, tzinfo=ZONE).timestamp()
    record = await store.record("order", str(number))
    assert record is not None and record.due == day_before
    told = Told()
    await remind_at(store, orders, day_before - 1, told)
    assert told.sent == []
    await remind_at(store, orders, day_before, told)
    await remind_at(store, orders, day_before + 60, told)  # looked again: not twice
    [(contact, ident, text, template, params)] = told.sent
    assert (contact, ident, template) == ("n:1", f"remind:{number}:due_soon", "payment_reminder")
    assert params == {
        "invoice": "INV-1001",
        "number": "1001",
        "amount": "₹7,292.50",
        "due_date": "2026-12-22",
    }
    assert "is due on 2026-12-22" in text
    # the engine was down past the overdue day and the week after: only the latest goes
    week_after = datetime(2026, 12, 29, 10, tzinfo=ZONE).timestamp()
    await remind_at(store, orders, week_after + 3600, told)
    assert [s[1] for s in told.sent[1:]] == [f"remind:{number}:overdue_week"]
    left = await store.record("order", str(number))
    assert left is not None and left.due is None
    assert left.data["reminded"] == ["due_soon", "overdue", "overdue_week"]


async def test_a_cancelled_or_paid_order_gets_no_reminder_even_if_still_due(
    store: Store, orders: OrderActions
) -> None:
    number = await placed(store, orders, "sand 2")  # 89.25
    record = await store.record("order", str(number))
    assert record is not None
    # paid, while the record still says it is due (a write that raced the reminder's look)
    paid_data, _ = with_payment(record.data, Decimal("89.25"), "cash", "2026-12-08T10:00:00")
    assert await store.put_records([replace(record, data=paid_data)])
    told = Told()
    await remind_at(store, orders, NOW + 30 * 86400, told)
    assert told.sent == []
    after = await store.record("order", str(number))
    assert after is not None and after.due is None


async def test_each_store_s_invoice_1001_is_its_own_pdf_on_a_shared_media_dir(
    store: Store, tmp_path: Path
) -> None:
    """A new database numbers from 1001 again: its PDF must not be another's left in MEDIA_DIR."""
    catalogue = load_catalogue(ROOT / "flows" / "data" / "catalogue.yaml")

    def pdf(order: dict[str, Any]) -> bytes:
        return f"{order['invoice']} {order['total']}".encode()

    first = OrderActions(catalogue, ZONE, pdf, tmp_path)
    draft = (await first.read(ctx(store), "Cement x 100"))["draft"]
    one = await first.place(ctx(store, key="p" * 32), draft)
    other = MemoryStore()  # another database, the same MEDIA_DIR
    draft = (await first.read(ctx(other, key="z" * 32), "sand 2"))["draft"]
    two = await first.place(ctx(other, key="y" * 32), draft)
    assert one["invoice"] == two["invoice"] == "INV-1001"
    assert one["invoice_file"] != two["invoice_file"]
    assert (tmp_path / one["invoice_file"]).read_bytes() == b"INV-1001 6400.00"
    assert (tmp_path / two["invoice_file"]).read_bytes() == b"INV-1001 89.25"
