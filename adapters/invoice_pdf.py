"""An order's invoice as a PDF document (fpdf2), with an embedded Unicode font so that "₹", "€"
and the locale's digits print: DejaVu Sans, from Debian's fonts-dejavu-core (or another TrueType
font given by path). The ordering pack calls it when an order is placed:

    from adapters.invoice_pdf import InvoicePdf
    from ordering.actions import Ordering

    ordering = Ordering(pdf=InvoicePdf())

The same bytes for the same order (the creation date is the order's): a PDF written again after
a crash is the PDF written before.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from ordering import invoices, texts

# fontTools, which fpdf2 subsets the font with, logs each glyph table at INFO.
logging.getLogger("fontTools").setLevel(logging.WARNING)

# Where Debian and Ubuntu (fonts-dejavu-core), Fedora and Alpine put DejaVu Sans.
FONT_FOLDERS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu-sans-fonts"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/TTF"),
)
REGULAR, BOLD = "DejaVuSans.ttf", "DejaVuSans-Bold.ttf"
FAMILY = "body"


class FontMissing(Exception):
    pass


def find_font(name: str = REGULAR) -> Path | None:
    return next((f / name for f in FONT_FOLDERS if (f / name).is_file()), None)


class InvoicePdf:
    """Renders an order (ordering.orders' mapping) as its invoice: `InvoicePdf()(order)`.
    Without its font it cannot: `problem()` says so (the ordering pack reports it when the
    flows load, and the admin API's .pdf answers 503 with it)."""

    def __init__(self, font: str | Path | None = None, bold: str | Path | None = None) -> None:
        self.font = Path(font) if font else find_font(REGULAR)
        self.bold = Path(bold) if bold else (self.font if font else find_font(BOLD))

    def problem(self) -> str | None:
        for path in (self.font, self.bold):
            if path is None:
                return (
                    "no DejaVu Sans font for invoice PDFs: install it (Debian: apt-get install"
                    " fonts-dejavu-core), or give InvoicePdf(font=..., bold=...) TrueType files"
                )
            if not path.is_file():
                return f"no font file {path} for invoice PDFs"
        return None

    def __call__(self, order: Mapping[str, Any]) -> bytes:
        problem = self.problem()
        if problem is not None:
            raise FontMissing(problem)
        assert self.font is not None and self.bold is not None
        cur, loc = order["currency"], order["locale"]

        def m(amount: Any) -> str:
            return texts.money(str(amount), cur, loc)

        pdf = FPDF(format="A4")
        pdf.set_creation_date(_created(order))
        pdf.set_title(f"Invoice {order['invoice']}")
        pdf.set_author(str(order.get("business") or ""))
        pdf.add_font(FAMILY, "", str(self.font))
        pdf.add_font(FAMILY, "B", str(self.bold))
        pdf.set_auto_page_break(auto=True, margin=15)
        pdf.add_page()
        width = pdf.epw

        pdf.set_font(FAMILY, "B", 16)
        if order.get("business"):
            pdf.cell(width, 9, str(order["business"]), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(FAMILY, "B", 13)
        pdf.cell(width, 8, f"Invoice {order['invoice']}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font(FAMILY, "", 10)
        for label, value in (
            ("Order", str(order["number"])),
            ("Date", str(order["date"])),
            ("Due by", str(order["due_date"])),
        ):
            pdf.cell(width, 6, f"{label}: {value}", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(4)

        with pdf.table(
            col_widths=(46, 14, 12, 14, 14),
            text_align=("LEFT", "RIGHT", "LEFT", "RIGHT", "RIGHT"),
            first_row_as_headings=True,
        ) as table:
            table.row(("Item", "Quantity", "Unit", "Price", "Amount"))
            for line in order["lines"]:
                table.row(
                    (
                        f"{line['name']} ({line['sku']})",
                        texts.quantity(line["quantity"], loc),
                        str(line["unit"]),
                        m(line["price"]),
                        m(line["line_total"]),
                    )
                )
        pdf.ln(3)

        rows = [("Subtotal", m(order["subtotal"]))]
        if Decimal(order["discount"]):
            rows.append(
                (f"Discount ({texts.quantity(order['percent'], loc)}%)", f"−{m(order['discount'])}")
            )
        rows.append((str(order.get("tax_name") or "Tax"), m(order["tax"])))
        rows.append(("Total", m(order["total"])))
        if order.get("payments"):
            rows.append(("Paid", m(invoices.paid(order))))
            if order["status"] != "cancelled":
                rows.append(("Still to pay", m(max(invoices.balance(order), Decimal(0)))))
        for label, value in rows:
            bold = label in ("Total", "Still to pay")
            pdf.set_font(FAMILY, "B" if bold else "", 11 if bold else 10)
            pdf.cell(width * 0.75, 7, label, align="R")
            pdf.cell(width * 0.25, 7, value, align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        if order["status"] == "cancelled":
            pdf.ln(4)
            pdf.set_font(FAMILY, "B", 11)
            pdf.cell(width, 7, "This order was cancelled.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        return bytes(pdf.output())


def _created(order: Mapping[str, Any]) -> datetime:
    at = order.get("confirmed_at")
    try:
        return datetime.fromisoformat(str(at))
    except ValueError:
        return datetime(2000, 1, 1, tzinfo=UTC)
