"""The command line: `python -m engine flows validate [PATH]` and `python -m engine chat`.

`chat` runs the real engine (actors, flows, committer, delivery) with an in-memory store and a
sender that prints to the terminal; a number picks a button or list row of the last message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .actions import Fn, load_actions
from .clock import SkippableClock
from .engine import Engine, EngineConfig, NotFound
from .errors import FlowError, errors_in
from .events import ButtonReply, Content, Customer, ListReply, Message, Text
from .flows import Flows, graph, load_flows, validate_path
from .flows.reader import read_flow
from .flowtests import parse_location, run_tests
from .memstore import MemoryStore
from .outbound import ButtonsMessage, ListMessage
from .ports import Outgoing
from .settings import parse_duration

CHAT_NUMBER = "chat"


def main(
    argv: list[str] | None = None,
    provided: Mapping[str, Fn] | None = None,
    close: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """`provided`: the built-in actions this process implements (see engine/__main__.py);
    `close` releases what they hold once a chat ends."""
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="WhatsApp conversation engine"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    flows = commands.add_parser("flows", help="work with flow files")
    flow_commands = flows.add_subparsers(dest="flows_command", required=True)
    validate = flow_commands.add_parser("validate", help="check flows; print file:line: problem")
    validate.add_argument(
        "path", nargs="?", help="a flow file or folder (default: $FLOWS_DIR or flows)"
    )
    graph = flow_commands.add_parser("graph", help="draw a flow: mermaid, dot or svg")
    graph.add_argument("flow", help="a flow's name in $FLOWS_DIR (or flows), or its file")
    graph.add_argument("--format", choices=("mermaid", "dot", "svg"), default="mermaid")
    graph.add_argument("-o", "--output", help="write here instead of printing")
    test = flow_commands.add_parser("test", help="run the conversation tests beside the flows")
    test.add_argument(
        "path", nargs="?", help="a test file, or a flows folder (default: $FLOWS_DIR or flows)"
    )
    chat = commands.add_parser("chat", help="talk to a flow in the terminal")
    chat.add_argument("--flow", help="the flow to start in (default: $ENTRY_FLOW or support)")
    chat.add_argument(
        "--contact", default="15550000001", help="your phone digits (default 15550000001)"
    )
    chat.add_argument("--name", default="Ana", help="your WhatsApp profile name")
    chat.add_argument("--flows-dir", help="where flows live (default: $FLOWS_DIR or flows)")
    args = parser.parse_args(argv)
    flows_dir = os.environ.get("FLOWS_DIR", "flows")
    if args.command == "flows" and args.flows_command == "graph":
        return graph_command(Path(flows_dir), args.flow, args.format, args.output, provided)
    if args.command == "flows" and args.flows_command == "validate":
        return validate_command(Path(args.path or flows_dir), provided)
    zone_name = os.environ.get("TIMEZONE", "").strip() or "UTC"
    try:
        zone = ZoneInfo(zone_name)
    except (ValueError, OSError, ZoneInfoNotFoundError):
        print(f"TIMEZONE={zone_name!r} is not an IANA time zone name", file=sys.stderr)
        return 2
    if args.command == "flows":  # test
        return run_tests(Path(args.path or flows_dir), provided, zone)
    entry = args.flow or os.environ.get("ENTRY_FLOW", "support")
    talk = chat_command(
        Path(args.flows_dir or flows_dir),
        entry,
        args.contact,
        args.name,
        provided=provided,
        zone=zone,
        media=Path(os.environ.get("MEDIA_DIR", "").strip() or "var/media"),
    )

    async def run() -> int:
        try:
            return await talk
        finally:
            if close is not None:
                await close()

    return asyncio.run(run())


def validate_command(path: Path, provided: Mapping[str, Fn] | None = None) -> int:
    problems = sorted(validate_path(path, provided), key=lambda p: (p.file, p.line))
    for p in problems:
        print(p)
    sys.stdout.flush()  # before the count, on stderr
    errors = errors_in(problems)
    warnings = len(problems) - len(errors)
    if errors:
        also = f" and {warnings} warning(s)" if warnings else ""
        print(f"{len(errors)} problem(s){also}", file=sys.stderr, flush=True)
        return 1
    print(f"ok: {path} is valid" + (f" ({warnings} warning(s))" if warnings else ""))
    return 0


def graph_command(
    flows_dir: Path,
    flow: str,
    fmt: str,
    output: str | None,
    provided: Mapping[str, Fn] | None = None,
) -> int:
    path = Path(flow)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = flows_dir / f"{flow}.yaml"
    if not path.is_file():
        print(f"no flow {flow!r}: neither a file nor {path}", file=sys.stderr)
        return 1
    actions, _ = load_actions(path.parent, provided)
    spec, problems = read_flow(path, actions)
    if spec is None:
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    text = graph.dot(spec) if fmt in ("dot", "svg") else graph.mermaid(spec)
    data = text.encode()
    if fmt == "svg":
        dot_program = shutil.which("dot")
        if dot_program is None:
            print(
                "svg needs Graphviz's dot (Debian: apt-get install graphviz);"
                " --format dot or mermaid work without it",
                file=sys.stderr,
            )
            return 1
        drawn = subprocess.run(
            [dot_program, "-Tsvg"], input=data, capture_output=True, check=False, timeout=60
        )
        if drawn.returncode != 0:
            print(f"dot failed: {drawn.stderr.decode(errors='replace')[:500]}", file=sys.stderr)
            return 1
        data = drawn.stdout
    if output:
        Path(output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def _numbered(m: ButtonsMessage | ListMessage) -> list[str]:
    """Options numbered as the chat reads them; a list's section titles above their rows."""
    if isinstance(m, ButtonsMessage):
        return [f"  {i}) {b.title}" for i, b in enumerate(m.buttons, start=1)]
    lines, n = [], 0
    for section in m.sections:
        if section.title:
            lines.append(f"  [{section.title}]")
        for row in section.rows:
            n += 1
            lines.append(
                f"  {n}) {row.title}" + (f" - {row.description}" if row.description else "")
            )
    return lines


class ChatSender:
    """Prints the bot's messages and remembers the options of the last one, numbered."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.options: list[tuple[str, str, str]] = []  # (kind, id, title)
        self.sent = 0
        self.offered = False  # some message of this turn offered options

    async def send(self, out: Outgoing) -> str:
        m = out.message
        self.sent += 1
        lines = m.body.splitlines() or [""]
        if isinstance(m, ButtonsMessage | ListMessage) and m.header:
            lines.insert(0, f"*{m.header}*")
        options: list[tuple[str, str, str]] = []
        if isinstance(m, ButtonsMessage):
            options = [("button", b.id, b.title) for b in m.buttons]
        elif isinstance(m, ListMessage):
            options = [("row", r.id, r.title) for s in m.sections for r in s.rows]
        if options and isinstance(m, ButtonsMessage | ListMessage):
            self.options = options
            self.offered = True
            lines.extend(_numbered(m))
        print("bot > " + "\n      ".join(lines), file=self._out, flush=True)
        return f"chat.{out.id}"

    async def mark_read(self, number: str, message_id: str, *, typing: bool = False) -> None:
        """The terminal shows no blue ticks."""

    def content(self, line: str) -> Content:
        """What the customer sends: a number picks an option; `/tap ID` taps one by id;
        `/location LAT,LNG [NAME]` shares a place; anything else is text."""
        text = line.strip()
        if text.isdigit() and 1 <= int(text) <= len(self.options):
            kind, ident, title = self.options[int(text) - 1]
            return ButtonReply(ident, title) if kind == "button" else ListReply(ident, title)
        command, _, arg = text.partition(" ")
        if command == "/tap" and arg.strip():
            for kind, ident, title in self.options:
                if ident == arg.strip():
                    return (
                        ButtonReply(ident, title) if kind == "button" else ListReply(ident, title)
                    )
            return ButtonReply(arg.strip(), arg.strip())  # an id no message offered: as Meta would
        if command == "/location":
            place = parse_location(arg)
            if place is not None:
                return place
        return Text(line)


async def chat_command(
    flows_dir: Path,
    entry: str,
    phone: str,
    name: str,
    *,
    provided: Mapping[str, Fn] | None = None,
    zone: ZoneInfo | None = None,
    media: Path | None = None,
) -> int:
    try:
        flows = load_flows(flows_dir, entry, provided, zone, media)
    except FlowError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return 1
    out = sys.stdout
    sender = ChatSender(out)
    clock = SkippableClock()
    engine = Engine(
        store=MemoryStore(),
        sender=sender,
        flows=flows,
        config=EngineConfig(send_concurrency=1),
        clock=clock,
    )
    await engine.start()
    interactive = sys.stdin.isatty()
    print(
        f"Talking to flow {entry!r} as +{phone}. A number picks an option; "
        "/state shows the conversation, /trace each transition, /wait 30m skips time"
        " (reminders fire), /agent TEXT"
        " replies as a person, /release hands back,"
        " /quit ends.",
        file=out,
    )
    loop = asyncio.get_running_loop()
    customer = Customer(number=CHAT_NUMBER, phone=phone, name=name)
    run = uuid.uuid4().hex[:8]
    count = 0
    tracing = False
    try:
        while True:
            if interactive:
                print("you > ", end="", file=out, flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "/quit":
                break
            line = line.rstrip("\n")
            key = engine.directory.lookup(CHAT_NUMBER, phone)
            if line.startswith("/wait"):
                await _wait(engine, key, clock=clock, sender=sender, line=line, out=out)
                continue
            if line.strip() == "/trace":
                tracing = _trace(flows, not tracing, out)
                continue
            if line.startswith("/location") and parse_location(line[9:]) is None:
                print("      (/location LAT,LNG [NAME], like /location 52.37,4.89 Home)", file=out)
                continue
            if line.startswith("/") and not line.startswith(("/tap ", "/location ")):
                await _command(engine, key, line, out)
                continue
            if not line.strip():
                continue
            count += 1
            await _say(engine, sender, customer, ident=f"chat.{run}.{count}", line=line, out=out)
    finally:
        await engine.close()
    return 0


async def _say(
    engine: Engine, sender: ChatSender, customer: Customer, *, ident: str, line: str, out: TextIO
) -> None:
    """The customer's line, sent as WhatsApp would send it, and the bot's answer printed."""
    before = sender.sent
    sender.offered = False
    message = Message(
        id=ident, timestamp=int(time.time()), customer=customer, content=sender.content(line)
    )
    await engine.ingest([message])
    await _settle(engine)
    if sender.sent > before and not sender.offered:
        sender.options = []  # a question without buttons: a number is just a number
    if sender.sent == before:
        await _silent(engine, engine.directory.lookup(CHAT_NUMBER, customer.phone or ""), out)


async def _silent(engine: Engine, key: str | None, out: TextIO) -> None:
    """Why the bot said nothing: a person holds the conversation, or the step says nothing."""
    held = False
    if key is not None:
        with contextlib.suppress(NotFound):
            held = bool((await engine.view(key, limit=0))["handoff"])
    if held:
        print(
            "      (the bot stays silent: a person holds this conversation; /release hands it"
            " back)",
            file=out,
        )
    else:
        print("      (the bot sent nothing: this step has nothing to say)", file=out)


def _trace(flows: Flows, on: bool, out: TextIO) -> bool:
    """`/trace`: each transition of every flow printed as it happens, or no longer."""
    for flow in flows.by_name.values():
        flow.trace((lambda text: print(f"      . {text}", file=out)) if on else None)
    print(f"      (trace {'on' if on else 'off'})", file=out)
    return on


async def _settle(engine: Engine) -> None:
    await engine.actors.wait_idle()
    await engine.delivery.wait_empty()


async def _wait(
    engine: Engine,
    key: str | None,
    *,
    clock: SkippableClock,
    sender: ChatSender,
    line: str,
    out: TextIO,
) -> None:
    """`/wait 30m`: time jumps ahead; reminders and delays that fall due run now."""
    _, _, arg = line.partition(" ")
    try:
        seconds = parse_duration(arg.strip()[:40])
        if seconds > 400 * 86400:
            raise ValueError("at most 400d")
    except ValueError as e:
        print(f"      (/wait DURATION, like 90s, 30m, 2h or 1d: {e})", file=out)
        return
    before = sender.sent
    was = await _step_of(engine, key)
    await clock.advance(seconds, lambda: _settle(engine))
    now = await _step_of(engine, key)
    if sender.sent == before:
        what = "nothing was due" if now == was else f"now at step {now}; nothing was sent"
        print(f"      ({arg.strip()} later: {what})", file=out)


async def _step_of(engine: Engine, key: str | None) -> str | None:
    if key is None:
        return None
    try:
        view = await engine.view(key, limit=0)
    except NotFound:
        return None
    return f"{view['flow']}.{view['state']}"


async def _command(engine: Engine, key: str | None, line: str, out: TextIO) -> None:
    command, _, arg = line.partition(" ")
    if key is None:
        print("      (say something first)", file=out)
        return
    if command == "/state":
        view = await engine.view(key, limit=0)
        print(
            f"      flow={view['flow']} state={view['state']} handoff={view['handoff']}"
            f" slots={view['slots']}"
            + "".join(
                f"\n      called from flow={f['flow']} state={f['state']}"
                for f in reversed(view.get("stack") or [])
            ),
            file=out,
        )
    elif command == "/agent" and arg.strip():
        await engine.agent_reply(key, arg.strip())
        await _settle(engine)
    elif command == "/release":
        await engine.release(key)
        print(
            "      (the bot has the conversation again; your next message starts the flow)",
            file=out,
        )
    else:
        print(
            "      commands: /tap ID, /location LAT,LNG [NAME], /state, /trace, /wait 30m,"
            " /agent TEXT, /release, /quit",
            file=out,
        )
