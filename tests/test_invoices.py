"""Invoices from tables of cases: payments (amounts, references, over-payment), the reminders'
schedule in the business's time zone, the PDF with its currency signs; and the engine's runner
of due records, on a fake clock, with a store that fails for a while."""

from __future__ import annotations

import io
import logging
import shutil
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader

from adapters.invoice_pdf import FontMissing, InvoicePdf
from engine.actions import DueContext, WhenDue
from engine.due import DueRunner
from engine.flows import validate_path
from engine.memstore import MemoryStore
from engine.ports import Record
from ordering import invoices
from ordering.actions import Ordering
from ordering.invoices import BadPayment, amount_of, reminder_now, schedule, with_payment
from ordering.orders import Refused
from tests.fakes.clock import FakeClock

KOLKATA = ZoneInfo("Asia/Kolkata")
ORDER: dict[str, Any] = {
    "number": 1001,
    "invoice": "INV-1001",
    "contact": "n:1",
    "status": "confirmed",
    "business": "Acme Building Supplies",
    "date": "2026-12-07",
    "due_date": "2026-12-22",
    "confirmed_at": "2026-12-07T10:00:00+05:30",
    "currency": "INR",
    "locale": "en_IN",
    "tax_name": "GST",
    "lines": [
        {
            "sku": "CEM-OPC53",
            "name": "Cement OPC 53 grade",
            "quantity": "100",
            "unit": "bag",
            "price": "50.00",
            "line_total": "5000.00",
        },
        {
            "sku": "SAND-R",
            "name": "River sand",
            "quantity": "20",
            "unit": "bag",
            "price": "42.50",
            "line_total": "850.00",
        },
    ],
    "subtotal": "5850.00",
    "percent": "0",
    "discount": "0.00",
    "tax": "1442.50",
    "total": "7292.50",
}


@pytest.mark.parametrize(
    ("written", "amount"),
    [
        ("5000", "5000"),
        ("2292.50", "2292.50"),
        (" 100.5 ", "100.5"),
        (7292.5, "7292.5"),  # a JSON number
        (1e2, "100"),
        (1, "1"),
    ],
)
def test_amounts_read(written: Any, amount: str) -> None:
    assert amount_of(written, ORDER) == Decimal(amount)


@pytest.mark.parametrize(
    "written",
    ["", "abc", "-5", "0", "0.001", "NaN", "Infinity", "1e400", None, True, [1], {"a": 1}],
)
def test_amounts_refused(written: Any) -> None:
    with pytest.raises(BadPayment):
        amount_of(written, ORDER)


def test_a_currency_without_decimals_takes_none() -> None:
    yen = {**ORDER, "currency": "JPY", "total": "7293"}
    assert amount_of("7000", yen) == 7000
    with pytest.raises(BadPayment, match="at most 0 decimals"):
        amount_of("7000.5", yen)


def test_references_are_one_clean_line() -> None:
    assert invoices.reference_of("  UTR\n402913\x00 ") == "UTR 402913"
    for bad in ("", " \n ", None, 5, "x" * 101):
        with pytest.raises(BadPayment):
            invoices.reference_of(bad)


def test_payments_partly_then_in_full_and_the_same_reference_once() -> None:
    order, new = with_payment(ORDER, Decimal("5000"), "UTR 1", "t1")
    assert new and (order["paid"], order["balance"], order["payment_status"]) == (
        "5000.00",
        "2292.50",
        "partly paid",
    )
    same, again = with_payment(order, Decimal("5000"), "UTR 1", "t2")
    assert not again and same == order
    assert with_payment(order, Decimal("5000"), "utr 1", "t2") == (order, False)
    with pytest.raises(Refused, match="already paid with 5000"):
        with_payment(order, Decimal("50"), "UTR 1", "t2")
    with pytest.raises(Refused, match="more than"):
        with_payment(order, Decimal("2292.51"), "UTR 2", "t2")
    full, _ = with_payment(order, Decimal("2292.50"), "UTR 2", "t3")
    assert (full["balance"], full["payment_status"]) == ("0.00", "paid")
    with pytest.raises(Refused, match="more than"):
        with_payment(full, Decimal("0.01"), "UTR 3", "t4")
    with pytest.raises(Refused, match="cancelled"):
        with_payment({**ORDER, "status": "cancelled"}, Decimal(1), "UTR 4", "t")


def _local(day: int, hour: int = 10) -> float:
    return datetime(2026, 12, day, hour, tzinfo=KOLKATA).timestamp()


def test_reminders_the_day_before_the_day_after_and_a_week_after_at_ten() -> None:
    assert schedule(ORDER, KOLKATA) == [
        ("due_soon", _local(21)),
        ("overdue", _local(23)),
        ("overdue_week", _local(29)),
    ]
    # the same days at ten in another zone are other instants
    assert schedule(ORDER, ZoneInfo("UTC"))[0][1] == _local(21) + 5.5 * 3600
    assert schedule({**ORDER, "status": "cancelled"}, KOLKATA) == []
    paid, _ = with_payment(ORDER, Decimal("7292.50"), "x", "t")
    assert schedule(paid, KOLKATA) == []
    # terms of a day: "due tomorrow" would come as the order is placed; not sent
    short = {**ORDER, "due_date": "2026-12-08"}
    assert [name for name, _ in schedule(short, KOLKATA)] == ["overdue", "overdue_week"]
    # placed at 09:59 with terms of two days: "due tomorrow" at 10:00 the next day, not at once
    early = {**ORDER, "due_date": "2026-12-09", "confirmed_at": "2026-12-07T09:59:00+05:30"}
    assert schedule(early, KOLKATA)[0] == ("due_soon", _local(8))
    early = {**early, "due_date": "2026-12-08"}
    assert [name for name, _ in schedule(early, KOLKATA)] == ["overdue", "overdue_week"]


def test_after_downtime_only_the_latest_reminder_goes() -> None:
    assert reminder_now(ORDER, KOLKATA, _local(21) - 1)[0] is None
    which, after, due = reminder_now(ORDER, KOLKATA, _local(21))
    assert (which, after["reminded"], due) == ("due_soon", ["due_soon"], _local(23))
    which, after, due = reminder_now(ORDER, KOLKATA, _local(30))
    assert (which, after["reminded"], due) == (
        "overdue_week",
        ["due_soon", "overdue", "overdue_week"],
        None,
    )


# --- the PDF -------------------------------------------------------------------------------------


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_the_invoice_pdf_prints_the_rupee_and_every_amount() -> None:
    render = InvoicePdf()
    assert render.problem() is None
    pdf = render(ORDER)
    assert pdf.startswith(b"%PDF-") and render(ORDER) == pdf  # the same bytes again
    text = _text(pdf)
    for shown in (
        "Acme Building Supplies",
        "Invoice INV-1001",
        "Due by: 2026-12-22",
        "Cement OPC 53 grade (CEM-OPC53)",
        "₹5,000.00",
        "₹850.00",
        "GST",
        "₹1,442.50",
        "₹7,292.50",
    ):
        assert shown in text
    assert "Paid" not in text
    paid, _ = with_payment(ORDER, Decimal("5000"), "UTR 1", "t")
    assert "Still to pay ₹2,292.50" in _text(render(paid))
    cancelled = {**paid, "status": "cancelled"}
    assert "Still to pay" not in _text(render(cancelled))
    assert invoices.public(cancelled)["balance"] == "0.00"
    assert invoices.public(cancelled)["paid"] == "5000.00"


def test_a_euro_invoice_in_german_and_many_lines_over_pages() -> None:
    lines = [{**ORDER["lines"][0], "name": f"Brot Nr. {n}", "sku": f"B{n}"} for n in range(80)]
    euro = {**ORDER, "currency": "EUR", "locale": "de_DE", "lines": lines, "total": "1234.50"}
    reader = PdfReader(io.BytesIO(InvoicePdf()(euro)))
    assert len(reader.pages) >= 2
    assert "Total 1.234,50\xa0€" in _text(InvoicePdf()(euro))


def test_without_its_font_the_pdf_says_what_to_install(tmp_path: Path) -> None:
    render = InvoicePdf(font=tmp_path / "none.ttf")
    assert "no font file" in (render.problem() or "")
    with pytest.raises(FontMissing):
        render(ORDER)


# --- the engine's runner of due records ---------------------------------------------------------


class Flaky(MemoryStore):
    """A memory store whose reads of due records fail while `down`."""

    down = False

    async def due_records(self, kind: str, before: float, limit: int) -> list[Record]:
        if self.down:
            raise OSError("disk unreadable")
        return await super().due_records(kind, before, limit)


async def test_due_records_reach_their_handler_at_their_time_and_a_failure_is_a_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    store = Flaky()
    seen: list[tuple[str, float]] = []
    broken = {"b"}

    async def handle(ctx: DueContext, record: Record) -> None:
        if record.key in broken:
            raise RuntimeError("a bug in the handler")
        seen.append((record.key, ctx.now))
        await ctx.records.put_records([replace(record, due=None)])

    handlers = {"thing": WhenDue("thing", handle)}

    async def notify(*args: Any) -> None:
        pass

    runner = DueRunner(store, clock, lambda: handlers, notify, poll=60.0)
    t0 = clock.now()
    await store.put_records([Record("thing", "a", {}, "n:1", due=t0 + 3600, at=t0)])
    runner.start()
    await clock.advance(3599)
    assert seen == []
    await clock.advance(1)  # at its due time exactly: the runner knew when it was
    assert seen == [("a", t0 + 3600)]
    # written while the runner sleeps (another process, the admin API): found at the next look
    await store.put_records([Record("thing", "c", {}, "n:1", due=t0 + 3610, at=t0)])
    await clock.advance(59)
    assert seen[1:] == [] and runner.idle
    await clock.advance(1)
    assert seen[1:] == [("c", t0 + 3660)]
    # a handler that fails: logged once, tried again at each look, the others go on
    await store.put_records(
        [
            Record("thing", "b", {}, "n:1", due=t0 + 3700, at=t0),
            Record("thing", "d", {}, "n:1", due=t0 + 3700, at=t0),
        ]
    )
    with caplog.at_level(logging.DEBUG, logger="engine.due"):
        await clock.advance(300)
        failed = [r for r in caplog.records if "its handler failed" in r.getMessage()]
        assert [r.levelno for r in failed][:1] == [logging.ERROR]
        assert all(r.levelno == logging.DEBUG for r in failed[1:]) and len(failed) >= 3
        assert [k for k, _ in seen[2:]] == ["d"]
        broken.clear()
        await clock.advance(60)
        assert [k for k, _ in seen[3:]] == ["b"]
        # the store cannot be read for an hour: said once, and once when it can again
        store.down = True
        await store.put_records([Record("thing", "e", {}, "n:1", due=clock.now() + 10, at=t0)])
        caplog.clear()
        await clock.advance(3600)
        assert [r.getMessage()[:28] for r in caplog.records if r.levelno >= logging.INFO] == [
            "due records cannot be read ("
        ]
        store.down = False
        await clock.advance(60)
        assert [k for k, _ in seen[4:]] == ["e"]
        assert any("can be read again" in r.getMessage() for r in caplog.records)
    await runner.stop()


def test_a_pack_that_cannot_draw_its_pdfs_is_a_load_problem(tmp_path: Path) -> None:
    flows = Path(__file__).resolve().parent.parent / "flows"
    fns, problems = Ordering(pdf=InvoicePdf(font=tmp_path / "none.ttf")).load(flows, None)
    assert fns == {} and [(Path(p.file).name, p.line) for p in problems] == [("actions.py", 1)]
    assert "no font file" in problems[0].message
    fns, problems = Ordering().load(flows, None, tmp_path)  # no renderer: no PDF, no problem
    assert problems == [] and "order.place" in fns


def test_templates_the_pack_sends_are_warned_of_when_templates_yaml_lacks_them(
    tmp_path: Path,
) -> None:
    shipped = Path(__file__).resolve().parent.parent / "flows"
    assert [p for p in validate_path(shipped) if "no template" in p.message] == []
    flows = tmp_path / "flows"
    shutil.copytree(shipped, flows)
    templates = flows / "templates.yaml"
    text = templates.read_text()
    templates.write_text(text[: text.index("# Payment reminders")])
    missing = [p for p in validate_path(flows) if "no template" in p.message]
    assert [(p.warning, p.message.split("'")[1]) for p in missing] == [
        (True, "payment_overdue"),
        (True, "payment_received"),
        (True, "payment_reminder"),
    ]
