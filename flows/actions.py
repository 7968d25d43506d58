"""Actions of the shipped flows: the ordering package's, bound to data/catalogue.yaml, with
invoices rendered as PDF documents (DejaVu Sans: Debian's fonts-dejavu-core).

Add your own here with @action (see docs/flows.md, "Actions: calling your code")."""

from adapters.invoice_pdf import InvoicePdf
from ordering.actions import Ordering

ordering = Ordering(pdf=InvoicePdf())

__all__ = ["ordering"]
