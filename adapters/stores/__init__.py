"""Stores: where the engine keeps what it must not lose (the Store port, engine/ports.py)."""
