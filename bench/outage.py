"""Postgres cut and stalled under a stream of webhooks: answers, memory and recovery.

Run from the repository root with the test services up: `python bench/outage.py`
(TEST_DATABASE_URL as the tests read it; about 2 minutes). The engine (`server.py`) talks to
Postgres through a TCP proxy in this process, so the outage is real: connections reset and
refused (cut), or open with nothing answered (stall). For each kind of outage it measures, from
outside, what a provider sees: every webhook's answer and how long it took, the engine's memory
before, during (sampled) and after, how long after the end of the outage the first webhook is
taken again, and whether every contact got its reply once Meta's retries (of the 503s) are in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import NUMBER, Fake, engine_env, quantile, scrape  # noqa: E402

from tests.fakes.proxy import Proxy  # noqa: E402
from tests.process import Server  # noqa: E402
from tests.support import body, change, signed, text  # noqa: E402

PG = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def webhook(n: int) -> tuple[bytes, dict[str, str]]:
    return signed(body(change([text(f"1{n:010d}", f"wamid.outage.{n}", "hi")], number=NUMBER)))


Answers = dict[int, tuple[int, float, float]]  # contact -> status, seconds, answered at


async def stream(url: str, contacts: list[int], concurrency: int) -> Answers:
    """One webhook per contact, `concurrency` in flight: each contact's answer."""
    answers: Answers = {}
    queue = list(reversed(contacts))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            while queue:
                n = queue.pop()
                raw, headers = webhook(n)
                started = time.perf_counter()
                async with s.post(f"{url}/webhooks/whatsapp", data=raw, headers=headers) as r:
                    await r.read()
                    now = time.perf_counter()
                    answers[n] = (r.status, now - started, now)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def sample_rss(url: str, until: asyncio.Event, peaks: list[float]) -> None:
    async with aiohttp.ClientSession() as session:
        while not until.is_set():
            m = await scrape(session, url)
            peaks.append(m["process_resident_memory_bytes"] / 2**20)
            await asyncio.sleep(0.2)


async def one(kind: str, before: int, during: int, concurrency: int) -> dict[str, Any]:
    parts = urlsplit(PG)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    netloc = f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"
    database_url = parts._replace(netloc=netloc, query=f"schema={schema}").geturl()
    fake = Fake()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(engine_env(Path(tmp), fake, DATABASE_URL=database_url), Path(tmp))
            await server.start()
            try:
                return await _run(
                    server.url, proxy, kind, before=before, during=during, concurrency=concurrency
                )
            finally:
                server.terminate()
    finally:
        fake.stop()
        await proxy.close()
        conn = await asyncpg.connect(PG)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def _run(
    url: str, proxy: Proxy, kind: str, *, before: int, during: int, concurrency: int
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        answers = await stream(url, list(range(before)), concurrency)
        rss_before = (await scrape(session, url))["process_resident_memory_bytes"] / 2**20
        proxy.cut() if kind == "cut" else proxy.stall()
        done, peaks = asyncio.Event(), []
        sampler = asyncio.create_task(sample_rss(url, done, peaks))
        outage = await stream(url, list(range(before, before + during)), concurrency)
        done.set()
        await sampler
        async with session.get(f"{url}/readyz") as r:
            ready_during = r.status
        proxy.restore()
        restored = time.perf_counter()
        answers.update(outage)
        refused = sorted(n for n, (status, _t, _at) in answers.items() if status != 200)
        back_after = None
        while refused:  # Meta sends what was refused again, until it is taken
            again = await stream(url, refused, concurrency)
            taken = [at for status, _t, at in again.values() if status == 200]
            if back_after is None and taken:
                back_after = min(taken) - restored
            refused = sorted(n for n, (status, _t, _at) in again.items() if status != 200)
            if refused:
                await asyncio.sleep(0.5)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            m = await scrape(session, url)
            sent = m.get('engine_outbound_messages_total{code="",result="accepted"}', 0.0)
            if sent >= before + during:
                break
            await asyncio.sleep(0.2)
        m = await scrape(session, url)
    times = [t for _status, t, _at in outage.values()]
    statuses: dict[str, int] = {}
    for status, _t, _at in outage.values():
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "outage": kind,
        "webhooks_during_outage": during,
        "answers_during_outage": statuses,
        "answer_p50_ms": quantile(times, 0.5) * 1000,
        "answer_max_ms": max(times) * 1000,
        "readyz_during_outage": ready_during,
        "rss_mib_before": rss_before,
        "rss_mib_peak_during": max(peaks),
        "rss_mib_after_every_reply": m["process_resident_memory_bytes"] / 2**20,
        "first_webhook_taken_after_restore_s": back_after,
        "replies_sent": m.get('engine_outbound_messages_total{code="",result="accepted"}', 0.0),
        "contacts": before + during,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=int, default=2000, help="webhooks before the outage")
    parser.add_argument("--during", type=int, default=20_000, help="webhooks during it")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    results = [
        await one("cut", args.before, args.during, args.concurrency),
        await one("stall", args.before, min(args.during, 2000), args.concurrency),
    ]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
