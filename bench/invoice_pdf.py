"""How long drawing an invoice's PDF takes (fpdf2, DejaVu Sans subset into each file), for 2,
20 and 200 lines, against writing the same invoice as WhatsApp text (the baseline, in the same
run); medians of 7 runs, and the PDF's size.

    python bench/invoice_pdf.py
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from adapters.invoice_pdf import InvoicePdf
from ordering import texts


def order(lines: int) -> dict[str, Any]:
    return {
        "number": 1001,
        "invoice": "INV-1001",
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
                "sku": f"SKU-{n}",
                "name": f"Cement OPC 53 grade, lot {n}",
                "quantity": "100",
                "unit": "bag",
                "price": "50.00",
                "line_total": "5000.00",
            }
            for n in range(lines)
        ],
        "subtotal": f"{5000 * lines}.00",
        "percent": "5",
        "discount": f"{250 * lines}.00",
        "tax": f"{1330 * lines}.00",
        "total": f"{6080 * lines}.00",
    }


def median_ms(fn: Any, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    render = InvoicePdf()
    render(order(2))  # the font is read once per process
    for lines in (2, 20, 200):
        data = order(lines)
        text = median_ms(lambda d=data: texts.invoice(d))
        pdf = median_ms(lambda d=data: render(d))
        size = len(render(data))
        print(
            f"{lines:>4} lines: PDF {pdf:7.1f} ms ({size / 1024:5.1f} KiB), text {text:6.3f} ms,"
            f" PDF/text {pdf / text:8.0f}x"
        )


if __name__ == "__main__":
    main()
