"""A WhatsApp conversation engine.

The core package: typed inbound events, the flow language and its compiler, per-contact actors,
the group committer and the outbox. It imports the standard library, PyYAML,
python-statemachine and itself only; storage, HTTP and provider adapters live in `adapters`,
and `server.py` wires them together.
"""

__version__ = "0.1.0"
