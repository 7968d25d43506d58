"""Start time and memory with 100,000 pending timers, against the same store without them.

Run from the repository root: `python bench/timers.py` (about a minute). It writes N
conversations (default 100,000) to an SQLite file through the store, each waiting in the
support flow's `ask` step with its reminder timer due in a day, and the same N conversations
without timers to a second file. Then it starts `python server.py` on each file in turn, --repeat
times, and prints the medians of: seconds from exec to `/readyz` 200, RSS once ready, and the
timers the scheduler holds in memory (its window of the soonest: one page, not N).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.stores.sqlite import SqliteStore  # noqa: E402
from engine.ports import Commit, ConversationRow, TimerWrite  # noqa: E402
from engine.records import Conversation  # noqa: E402
from tests.process import Server  # noqa: E402

NUMBER = "106540352242922"


async def fill(path: Path, contacts: int, with_timers: bool) -> None:
    store = SqliteStore(path)
    await store.open()
    now = time.time()
    try:
        for start in range(0, contacts, 1000):
            ops = []
            for i in range(start, min(start + 1000, contacts)):
                key = f"{NUMBER}:1555{i:07d}"
                due = now + 86400 + i  # tomorrow, one a second
                convo = Conversation(
                    key=key, number=NUMBER, flow="support", flow_version="", state="ask"
                )
                convo.step, convo.last_in_at = 1, now
                if with_timers:
                    convo.timer_due = due
                ops.append(
                    Commit(
                        ConversationRow(
                            key, NUMBER, "support", "ask", False, now, convo.snapshot()
                        ),
                        timers=[TimerWrite(key, "flow", due, 1, 0)] if with_timers else (),
                    )
                )
            await store.write(ops)
    finally:
        await store.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def start_once(path: Path, workdir: Path) -> dict[str, float]:
    env = {"DATABASE_URL": f"sqlite:///{path}", "FLOWS_DIR": str(ROOT / "flows")}
    server = Server(env, workdir, name=path.stem)
    started = time.perf_counter()
    await server.start(timeout=120)
    ready = time.perf_counter() - started
    assert server.proc is not None
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/metrics") as r:
            page = await r.text()
        held = next(
            float(ln.split()[1]) for ln in page.splitlines() if ln.startswith("engine_timers_held ")
        )
        return {"ready_s": ready, "rss_mb": rss_mb(server.proc.pid), "held": held}
    finally:
        server.terminate()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timed, plain = work / "timers.sqlite3", work / "plain.sqlite3"
        await fill(timed, args.contacts, True)
        await fill(plain, args.contacts, False)
        runs: dict[str, list[dict[str, float]]] = {"timers": [], "no_timers": []}
        for _ in range(args.repeat):
            runs["no_timers"].append(await start_once(plain, work))
            runs["timers"].append(await start_once(timed, work))
    result: dict[str, object] = {"contacts": args.contacts, "repeat": args.repeat}
    for name, rs in runs.items():
        result[name] = {
            "ready_s": statistics.median(r["ready_s"] for r in rs),
            "rss_mb": statistics.median(r["rss_mb"] for r in rs),
            "timers_held_in_memory": statistics.median(r["held"] for r in rs),
        }
    t, p = result["timers"], result["no_timers"]
    assert isinstance(t, dict) and isinstance(p, dict)
    result["extra_start_s"] = t["ready_s"] - p["ready_s"]
    result["extra_rss_mb"] = t["rss_mb"] - p["rss_mb"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
