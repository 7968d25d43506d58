"""Logging set-up: one line per record (a traceback's lines follow it, marked), nothing a
stranger sends can forge a line, phone numbers masked, secrets redacted.

Everything happens in the formatter, in one place, over the whole text of a record:
- control characters (newlines, carriage returns, escape sequences, Unicode line separators and
  bidirectional overrides) inside a message are written as escapes (`\\n`, `\\x1b`, `\\u2028`), so a
  value like a message id that holds a newline cannot start a second, forged record;
- a traceback keeps its lines, each one indented with `  | ` so that it can never be mistaken
  for a record of its own;
- a message longer than 4,000 characters is cut there, saying how much was left out, so a
  3 MB value in a webhook does not become a 3 MB line;
- any run of 7 or more digits keeps only its last 4 (`***4567`), so a number that reaches a log
  line by any path is masked; known secret values are replaced outright.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

# Runs of 7+ digits, and (kept whole, so that digits after one are not taken for its own) the
# escapes `escape` writes: "\u2028" then "2026-12-06" must not read as "\u***2026".
_DIGITS = re.compile(r"\\u[0-9a-f]{4}|\\x[0-9a-f]{2}|\d{7,}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SECRETS: list[str] = []  # longest first, so a secret inside another is not half-replaced
MAX_MESSAGE = 4000


def mask(text: str | None) -> str:
    """Mask every run of 7+ digits in `text`, keeping its last four: 15551234567 -> ***4567."""
    if not text:
        return "-"
    return _DIGITS.sub(_mask_one, text)


def _mask_one(m: re.Match[str]) -> str:
    found = m.group(0)
    return found if found[0] == "\\" else "***" + found[-4:]


def escape(text: str) -> str:
    """`text` with every control character written as an escape: one line, nothing hidden."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group(0)
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


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
        message = escape(record.getMessage())
        if len(message) > MAX_MESSAGE:
            message = f"{message[:MAX_MESSAGE]}... ({len(message) - MAX_MESSAGE} more characters)"
        record.message = message
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        blocks = [record.exc_text, self.formatStack(record.stack_info) if record.stack_info else ""]
        for block in blocks:
            for line in (block or "").splitlines():
                text += "\n  | " + escape(line)
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
    for noisy in (
        "aiohttp.access",
        "aiosqlite",
        "statemachine",
        "asyncio",
        "httpx",
        "httpx2",
        "openai",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
