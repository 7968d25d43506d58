"""Ordering on WhatsApp: a catalogue, orders read from free text, quotes, orders placed once,
invoices and payments. Pure functions at the core (catalogue, parsing, pricing, orders); the
flow uses them through the actions of `ordering.actions`."""
