"""The console sender: prints each outbound message for a person to read (the default).

What it prints holds what customers sent (a profile name, an answer echoed back), and stdout
often shares a log with stderr: every line is escaped like a log record, so a value with a
newline or an escape sequence cannot pass for a line of its own. A file sent from the media
folder (an invoice PDF) is copied to `sent/` in that folder, and the line names the copy.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import TextIO

from engine.errors import PermanentDelivery
from engine.logs import escape, mask
from engine.outbound import (
    ButtonsMessage,
    ListMessage,
    MediaMessage,
    OutMessage,
    TemplateMessage,
    media_path,
)
from engine.ports import Outgoing


def render(message: OutMessage) -> list[str]:
    """A message as lines of plain text, options in brackets."""
    lines = []
    if isinstance(message, TemplateMessage):
        lines.append(f"[template {message.name} {message.language}] {message.body}")
        if message.header is not None and message.header[0] != "text":
            lines.append(f"({message.header[0]}: {message.header[1]})")
        return lines
    if isinstance(message, ButtonsMessage | ListMessage) and message.header:
        lines.append(f"*{message.header}*")
    lines.extend(message.body.splitlines() or [""])
    if isinstance(message, ButtonsMessage):
        lines.append("  ".join(f"[{b.title}]" for b in message.buttons))
    elif isinstance(message, ListMessage):
        lines.append(f"({message.button})")
        for section in message.sections:
            if section.title:
                lines.append(f"  {section.title}")
            for row in section.rows:
                desc = f" - {row.description}" if row.description else ""
                lines.append(f"  [{row.title}]{desc}")
    if isinstance(message, ButtonsMessage | ListMessage) and message.footer:
        lines.append(f"_{message.footer}_")
    return lines


class ConsoleSender:
    def __init__(self, stream: TextIO | None = None, media_dir: Path | None = None) -> None:
        self._stream = stream or sys.stdout
        self._media_dir = media_dir

    async def send(self, out: Outgoing) -> str:
        to = mask(escape(out.phone or out.user_id or ""))
        lines = render(out.message)
        m = out.message
        if isinstance(m, MediaMessage) and m.file:
            lines.append(f"(saved as {self._save(out.id, m)})")
        head, *rest = (escape(line) for line in lines)
        text = f"-> {to} (via {escape(out.number)}): {head}"
        for line in rest:
            text += "\n     " + line
        print(text, file=self._stream, flush=True)
        return f"console.{out.id}"

    def _save(self, ident: str, m: MediaMessage) -> Path:
        """Copy the file into MEDIA_DIR/sent/, named by the message id: what the customer
        would have received."""
        assert m.file is not None
        if self._media_dir is None:
            raise PermanentDelivery("no MEDIA_DIR to read the file from", local=True)
        try:
            source = media_path(self._media_dir, m.file, m.kind)
            folder = self._media_dir / "sent"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', ident)}-{source.name}"
            shutil.copyfile(source, target)
        except (ValueError, OSError) as e:
            raise PermanentDelivery(f"media file {m.file!r}: {e}", local=True) from e
        return target

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        shown = "read, typing" if typing else "read"
        print(f"-- ({shown}) {escape(message_id)}", file=self._stream, flush=True)
