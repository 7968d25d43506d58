"""A TCP proxy on loopback that a test can cut or stall: the engine talks to Postgres (or
Redis) through it, so an outage is a real one (connections reset, new ones refused, or bytes
that stop flowing), not a mock."""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.mode = "pass"  # pass | cut (reset and refuse) | stall (accept, forward nothing)
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._muted: set[asyncio.StreamWriter] = set()  # clients that hear nothing back

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Reset every open connection, and refuse new ones until restore()."""
        self.mode = "cut"
        for client, server in list(self._pairs):
            for w in (client, server):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._pairs.clear()

    def stall(self) -> None:
        """Keep every connection open, accept new ones, and forward nothing, not even a close:
        a side that hangs up meanwhile is never heard of by the other (a network partition)."""
        self.mode = "stall"

    def lose_commit_answers(self) -> None:
        """Forward everything, but once a connection sends COMMIT, drop whatever Postgres says
        back on it: the transaction commits and the client never learns so."""
        self.mode = "lose-commit"

    def restore(self) -> None:
        self.mode = "pass"
        self._muted.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data and self.mode == "stall":
                    # A close lost in the partition: the far side never hears of it, and its
                    # end of the connection lives on (until cut() or close()).
                    return
                if not data:
                    break
                while self.mode == "stall":
                    await asyncio.sleep(0.05)
                if self.mode == "cut":
                    break
                if self.mode == "lose-commit" and dst is pair[1] and b"COMMIT" in data:
                    self._muted.add(pair[0])
                if dst in self._muted:
                    continue
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.transport.abort()
