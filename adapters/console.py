"""The console sender: prints each outbound message for a person to read (the default).

What it prints holds what customers sent (a profile name, an answer echoed back), and stdout
often shares a log with stderr: every line is escaped like a log record, so a value with a
newline or an escape sequence cannot pass for a line of its own.
"""

from __future__ import annotations

import sys
from typing import TextIO

from engine.logs import escape, mask
from engine.outbound import ButtonsMessage, ListMessage, OutMessage, TemplateMessage
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
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout

    async def send(self, out: Outgoing) -> str:
        to = mask(escape(out.phone or out.user_id or ""))
        head, *rest = (escape(line) for line in render(out.message))
        text = f"-> {to} (via {escape(out.number)}): {head}"
        for line in rest:
            text += "\n     " + line
        print(text, file=self._stream, flush=True)
        return f"console.{out.id}"
