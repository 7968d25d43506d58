"""Logging set-up: one line per record, phone numbers masked, secrets redacted.

Masking happens in the formatter, over the whole formatted text (tracebacks included), so a
number that reaches a log line by any path is masked: any run of 7 or more digits keeps only its
last 4. Known secret values are replaced outright.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

_DIGITS = re.compile(r"\d{7,}")


def mask(text: str | None) -> str:
    """Mask every run of 7+ digits in `text`, keeping its last four: 15551234567 -> ***4567."""
    if not text:
        return "-"
    return _DIGITS.sub(lambda m: "***" + m.group(0)[-4:], text)


_SECRETS: list[str] = []  # longest first, so a secret inside another is not half-replaced


def redact(secret: str) -> None:
    """Never log `secret` (also for values learnt after start, like a token read from a file)."""
    if len(secret) >= 4 and secret not in _SECRETS:
        _SECRETS.append(secret)
        _SECRETS.sort(key=len, reverse=True)


class MaskingFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        for secret in secrets:
            redact(secret)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in _SECRETS:
            text = text.replace(secret, "[redacted]")
        return mask(text)


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Route every logger through one masking handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # LOG_LEVEL applies to the engine's own loggers; libraries say only what matters.
    root.setLevel(max(logging.getLevelName(level), logging.INFO))
    for ours in ("engine", "adapters", "server"):
        logging.getLogger(ours).setLevel(level)
    for noisy in ("aiohttp.access", "aiosqlite", "statemachine", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
