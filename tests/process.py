"""Running the real `python server.py` as a child process for crash and shutdown tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import aiohttp

from tests.support import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One run of server.py; stdout and stderr go to files so nothing blocks on a full pipe."""

    def __init__(
        self, env: dict[str, str], workdir: Path, name: str = "server", root: Path = ROOT
    ) -> None:
        self.root = root  # the tree whose server.py runs (a benchmark may run an older one)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self._env = {
            "PATH": os.environ.get("PATH", ""),
            **env,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[Any]] = []

    async def start(self, timeout: float = 20.0) -> None:
        out = open(self.stdout_path, "ab")  # noqa: SIM115 - closed in wait()
        err = open(self.stderr_path, "ab")  # noqa: SIM115
        self._files = [out, err]
        self.proc = subprocess.Popen(
            [sys.executable, str(self.root / "server.py")],
            env=self._env,
            cwd=self.workdir,
            stdout=out,
            stderr=err,
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode}: {self.stderr()}"
                    )
                try:
                    async with session.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s: {self.stderr()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close_files()

    def terminate(self) -> float:
        """SIGTERM; return the seconds it took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self._close_files()
        return time.monotonic() - started

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_files()

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
