"""Memory under a body flood: what strangers holding large unsigned bodies cost `server.py`.

Run from the repository root: `python bench/hostile.py` (about a minute). It starts the real
server (SQLite, console sender), warms it with signed webhooks, then opens N connections
(default 120) that each announce a 4 MiB body with a well-formed but wrong signature (so the
body has to be read before it can be refused), send all of it but the last byte, and hold the
connection open. Meanwhile it times `GET /healthz` and a signed webhook from a real customer.
Then it closes the connections and measures again. It prints the server's RSS before, at the
peak and after, how the flood was answered, and the /healthz latency; the same run is repeated
with no signature header at all. Figures are medians of --repeat runs.

Targets (issue 5): 120 held bodies add at most 160 MB; RSS is back within 80 MB once they close;
/healthz is served meanwhile; the good webhook is accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.process import Server  # noqa: E402
from tests.support import SECRET, body, change, signed, text  # noqa: E402

SIZE = 4 * 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def hold_body(port: int, signature: str | None, answers: list[str]) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {SIZE}\r\n"
    )
    if signature is not None:
        head += f"X-Hub-Signature-256: {signature}\r\n"
    writer.write((head + "\r\n").encode())
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < SIZE - 1:
            n = min(len(chunk), SIZE - 1 - sent)
            writer.write(chunk[:n])
            await writer.drain()
            sent += n
    except ConnectionError:
        pass

    async def answer() -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 60)
            answers.append(line.decode(errors="replace").strip() or "closed")
        except (TimeoutError, ConnectionError):
            answers.append("no answer")

    asyncio.get_running_loop().create_task(answer())
    return writer


async def one_run(
    connections: int, signature: str | None, extra: dict[str, str]
) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(
            {
                "PATH": "/usr/bin:/bin",
                "DATABASE_URL": f"sqlite:///{tmp}/engine.sqlite3",
                "FLOWS_DIR": str(ROOT / "flows"),
                "WHATSAPP_APP_SECRET": SECRET,
                "LOG_LEVEL": "DEBUG",  # to count the memory trims
                **extra,
            },
            Path(tmp),
        )
        await server.start()
        assert server.proc is not None
        pid = server.proc.pid
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(50):  # warm up: a real workload first
                    raw, headers = signed(body(change([text(f"1555{i:07d}", f"w.{i}", "hi")])))
                    async with session.post(
                        f"{server.url}/webhooks/whatsapp", data=raw, headers=headers
                    ) as r:
                        assert r.status == 200
                await asyncio.sleep(1.0)
                before = rss_mb(pid)
                answers: list[str] = []
                writers = await asyncio.gather(
                    *(hold_body(server.port, signature, answers) for _ in range(connections))
                )
                await asyncio.sleep(1.0)
                peak = rss_mb(pid)
                health = []
                for _ in range(20):
                    started = time.perf_counter()
                    async with session.get(f"{server.url}/healthz") as r:
                        assert r.status == 200
                    health.append(time.perf_counter() - started)
                    peak = max(peak, rss_mb(pid))
                raw, headers = signed(body(change([text("15559999999", "w.good", "hi")])))
                async with session.post(
                    f"{server.url}/webhooks/whatsapp", data=raw, headers=headers
                ) as r:
                    good = r.status
                for w in writers:
                    w.close()
                await asyncio.sleep(3.0)
                after = rss_mb(pid)
                trims = server.stderr().count("handed back")
                tally: dict[str, int] = {}
                for a in answers:
                    tally[a] = tally.get(a, 0) + 1
        finally:
            server.stop_quietly()
        return {
            "before": before,
            "peak_added": peak - before,
            "after_added": after - before,
            "healthz_ms": 1000 * statistics.median(health),
            "good_webhook": good,
            "trims": trims,
            "answers": ", ".join(f"{n} x {a}" for a, n in sorted(tally.items())),
        }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()
    extra = dict(e.split("=", 1) for e in args.env)
    for label, signature in (
        ("well-formed wrong signature", "sha256=" + "0" * 64),
        ("no signature", None),
    ):
        runs = [await one_run(args.connections, signature, extra) for _ in range(args.repeat)]
        med = {
            k: statistics.median(float(r[k]) for r in runs)
            for k in ("before", "peak_added", "after_added", "healthz_ms")
        }
        print(f"{args.connections} held 4 MiB bodies, {label} (median of {args.repeat}):")
        print(f"  RSS before          {med['before']:.0f} MB")
        print(f"  added at the peak   {med['peak_added']:.0f} MB  (target <= 160)")
        print(f"  added after close   {med['after_added']:.0f} MB  (target <= 80)")
        print(f"  /healthz meanwhile  {med['healthz_ms']:.1f} ms (median)")
        print(f"  good webhook        {[r['good_webhook'] for r in runs]}")
        print(f"  answers             {runs[-1]['answers']}")
        print(f"  memory trims        {[r['trims'] for r in runs]}")


if __name__ == "__main__":
    asyncio.run(main())
