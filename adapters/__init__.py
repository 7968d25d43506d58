"""Adapters: HTTP, storage and provider implementations of the engine's ports."""
