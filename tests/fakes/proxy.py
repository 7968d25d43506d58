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
        """Keep every connection open, accept new ones, and forward nothing."""
        self.mode = "stall"

    def restore(self) -> None:
        self.mode = "pass"

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
                if not data:
                    break
                while self.mode == "stall":
                    await asyncio.sleep(0.05)
                if self.mode == "cut":
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.transport.abort()
