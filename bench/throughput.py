"""Webhook -> reply throughput on SQLite, acknowledgement latency, and memory at 100k contacts.

Run from the repository root: `python bench/throughput.py` (about 5 minutes on 2 cores).
With `--against REV` it measures only webhook -> reply, alternating this tree and the commit REV
(exported to a temporary folder) run by run, and prints both medians and their ratio; with
`--postgres URL` (and `--redis URL`), the same on SQLite, on that Postgres (a fresh schema each
run) and on Postgres behind Redis, then the first reply of a contact that is not in memory, on
Postgres alone and behind Redis, run by run.
Everything runs as separate processes on loopback: the engine (`server.py`, SQLite, the
WhatsApp sender), a fake Graph API that accepts every send, and this load generator, which
posts signed webhooks, each from a new contact, and waits until every reply was accepted by the
fake. A baseline (bench/baseline.py: signature check + JSON parse + 200, no engine) is measured
with the same load generator in the same run; figures are medians of the repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.process import Server, free_port  # noqa: E402
from tests.support import SECRET, body, change, signed, text  # noqa: E402

NUMBER = "106540352242922"


def metrics(page: str) -> dict[str, float]:
    out = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as r:
        return metrics(await r.text())


def accepted(m: dict[str, float]) -> float:
    return m.get('engine_outbound_messages_total{code="",result="accepted"}', 0.0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bodies(start: int, contacts: int, per_body: int) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for first in range(start, start + contacts, per_body):
        items = [
            text(f"1{n:010d}", f"wamid.bench.{n}", "hi")
            for n in range(first, min(first + per_body, start + contacts))
        ]
        out.append(signed(body(change(items, number=NUMBER))))
    return out


REFUSED = [0]  # webhooks answered 503 (backlog full) and sent again, as Meta would


async def post_all(
    url: str, docs: list[tuple[bytes, dict[str, str]]], concurrency: int
) -> list[float]:
    """Post every body with `concurrency` in flight; return each acknowledgement time (s).
    A 503 (backlog full) is sent again after a short pause, as Meta retries (it waits longer)."""
    latencies: list[float] = []
    queue = list(reversed(docs))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                raw, headers = queue.pop()
                while True:
                    started = time.perf_counter()
                    async with session.post(
                        f"{url}/webhooks/whatsapp", data=raw, headers=headers
                    ) as r:
                        await r.read()
                        status = r.status
                    if status != 503:
                        break
                    REFUSED[0] += 1
                    await asyncio.sleep(0.5)
                if status != 200:
                    raise RuntimeError(f"webhook answered {status}")
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Fake:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.graph", "--port", str(self.port)], cwd=ROOT
        )
        self.url = f"http://127.0.0.1:{self.port}/v25.0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def engine_env(workdir: Path, fake: Fake, root: Path = ROOT, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{workdir / 'engine.sqlite3'}",
        "FLOWS_DIR": str(root / "flows"),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_ACCESS_TOKEN": "bench-token",
        "WHATSAPP_API_URL": fake.url,
        "MAX_ACTORS": "10000",
        "SEND_RATE": "10000",  # the engine's own speed: the fake has no throughput limit
        **extra,
    }


async def until_sent(
    session: aiohttp.ClientSession, url: str, target: float, timeout: float
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await scrape(session, url)
        if accepted(m) >= target:
            return m
        await asyncio.sleep(0.05)
    raise TimeoutError(f"only {accepted(m)} of {target} replies were sent")


async def baseline_run(contacts: int, concurrency: int) -> float:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "baseline.py"),
            "--port",
            str(port),
            "--secret",
            SECRET,
        ]
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"{url}/readyz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        docs = bodies(0, contacts, 1)
        started = time.perf_counter()
        await post_all(url, docs, concurrency)
        return contacts / (time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait()


async def engine_run(
    fake: Fake, contacts: int, concurrency: int, root: Path = ROOT, **extra: str
) -> dict[str, float]:
    """`contacts` new contacts, one message each, one webhook each; until every reply is sent."""
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(engine_env(Path(tmp), fake, root, **extra), Path(tmp), root=root)
        await server.start()
        assert server.proc is not None
        try:
            async with aiohttp.ClientSession() as session:
                base = accepted(await scrape(session, server.url))
                docs = bodies(0, contacts, 1)
                cpu0 = cpu_seconds(server.proc.pid)
                started = time.perf_counter()
                acks = await post_all(server.url, docs, concurrency)
                await until_sent(session, server.url, base + contacts, timeout=600)
                elapsed = time.perf_counter() - started
                cpu = cpu_seconds(server.proc.pid) - cpu0
                m = await scrape(session, server.url)
            return {
                "contacts_per_s": contacts / elapsed,
                "ack_p50_ms": quantile(acks, 0.5) * 1000,
                "ack_p99_ms": quantile(acks, 0.99) * 1000,
                "engine_cpu_us_per_contact": cpu / contacts * 1e6,
                "commits": m.get("engine_store_commits_total", 0),
                "writes": m.get("engine_store_commit_ops_total", 0),
            }
        finally:
            server.terminate()


async def scale_run(fake: Fake, contacts: int) -> dict[str, float]:
    """100k contacts in 100-message batches (and 1000-item batches for the ack figure)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(engine_env(Path(tmp), fake), Path(tmp))
        await server.start()
        assert server.proc is not None
        try:
            async with aiohttp.ClientSession() as session:
                big = bodies(0, 5000, 1000)
                big_acks = []
                for doc in big:  # one 1000-update batch at a time, as Meta sends them
                    big_acks.extend(await post_all(server.url, [doc], 1))
                await until_sent(session, server.url, 5000, timeout=600)
                started = time.perf_counter()
                await post_all(server.url, bodies(5000, contacts - 5000, 100), 8)
                m = await until_sent(session, server.url, contacts, timeout=1800)
                elapsed = time.perf_counter() - started
                await asyncio.sleep(1)
                m = await scrape(session, server.url)
            return {
                "contacts": contacts,
                "batched_contacts_per_s": (contacts - 5000) / elapsed,
                "ack_1000_item_batch_median_ms": statistics.median(big_acks) * 1000,
                "ack_1000_item_batch_max_ms": max(big_acks) * 1000,
                "rss_mib": m["process_resident_memory_bytes"] / 2**20,
                "gc_pause_max_ms": m["engine_gc_pause_seconds_max"] * 1000,
                "gc_pauses": m["engine_gc_pause_seconds_count"],
                "machines_live": m["engine_machines_live"],
                "actors_resident": m["engine_actors_resident"],
                "replies_sent": accepted(m),
                "webhooks_refused_503_then_retried": REFUSED[0],
            }
        finally:
            server.terminate()


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=10_000, help="contacts per throughput run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="webhooks in flight")
    parser.add_argument(
        "--scale", type=int, default=100_000, help="contacts for the memory run (0: skip)"
    )
    parser.add_argument(
        "--against", metavar="REV", help="compare webhook -> reply with this commit, run by run"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="compare webhook -> reply on this Postgres with SQLite, run by run",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="with --postgres: also Postgres behind this Redis"
    )
    args = parser.parse_args()
    if args.postgres:
        await on_postgres(args.postgres, args.redis, args.contacts, args.repeats, args.concurrency)
        return
    if args.against:
        await against(args.against, args.contacts, args.repeats, args.concurrency)
        return
    fake = Fake()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    }
    try:
        baseline = [
            await baseline_run(args.contacts, args.concurrency) for _ in range(args.repeats)
        ]
        normal = [
            await engine_run(fake, args.contacts, args.concurrency) for _ in range(args.repeats)
        ]
        full = [
            await engine_run(fake, args.contacts, args.concurrency, SQLITE_SYNCHRONOUS="FULL")
            for _ in range(args.repeats)
        ]
        results["baseline_webhooks_per_s"] = statistics.median(baseline)
        results["engine"] = median_of(normal)
        results["engine_full_sync"] = median_of(full)
        results["engine"]["ratio_to_baseline"] = (
            results["engine"]["contacts_per_s"] / results["baseline_webhooks_per_s"]
        )
        results["full_sync_ratio_to_normal"] = (
            results["engine_full_sync"]["contacts_per_s"] / results["engine"]["contacts_per_s"]
        )
        if args.scale:
            results["scale"] = await scale_run(fake, args.scale)
    finally:
        fake.stop()
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


async def against(rev: str, contacts: int, repeats: int, concurrency: int) -> None:
    """This tree and `rev`, alternating, so both meet the same noise on a shared machine."""
    fake = Fake()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        runs: dict[str, list[dict[str, float]]] = {"this": [], rev: []}
        try:
            for _ in range(repeats):
                runs[rev].append(await engine_run(fake, contacts, concurrency, root=old))
                runs["this"].append(await engine_run(fake, contacts, concurrency))
        finally:
            fake.stop()
    now, then = median_of(runs["this"]), median_of(runs[rev])
    result = {
        "contacts": contacts,
        "repeats": repeats,
        rev: then,
        "this": now,
        "each_run_contacts_per_s": {k: [r["contacts_per_s"] for r in v] for k, v in runs.items()},
        "ratio": now["contacts_per_s"] / then["contacts_per_s"],
    }
    print(json.dumps(result, indent=2))


async def on_postgres(
    url: str, redis_url: str | None, contacts: int, repeats: int, concurrency: int
) -> None:
    """SQLite, Postgres and Postgres + Redis (a fresh schema each run), alternating, on the same
    machine; then the first reply of contacts not in memory, with and without Redis."""
    tiers: dict[str, dict[str, str]] = {"sqlite": {}, "postgres": {}}
    if redis_url:
        tiers["postgres+redis"] = {"REDIS_URL": redis_url}
    fake = Fake()
    runs: dict[str, list[dict[str, float]]] = {tier: [] for tier in tiers}
    cold: dict[str, list[dict[str, float]]] = {tier: [] for tier in tiers if tier != "sqlite"}
    try:
        for _ in range(repeats):
            for tier, extra in tiers.items():
                if tier == "sqlite":
                    runs[tier].append(await engine_run(fake, contacts, concurrency))
                    continue
                async with fresh_schema(url) as database_url:
                    runs[tier].append(
                        await engine_run(
                            fake, contacts, concurrency, DATABASE_URL=database_url, **extra
                        )
                    )
        for _ in range(repeats):
            for tier, latencies in cold.items():
                async with fresh_schema(url) as database_url:
                    latencies.append(
                        await first_reply({"DATABASE_URL": database_url, **tiers[tier]})
                    )
    finally:
        fake.stop()
    medians = {tier: median_of(r) for tier, r in runs.items()}
    result: dict[str, Any] = {
        "contacts": contacts,
        "repeats": repeats,
        **medians,
        "each_run_contacts_per_s": {k: [r["contacts_per_s"] for r in v] for k, v in runs.items()},
    }
    for tier in cold:
        result[f"{tier}_ratio_to_sqlite"] = (
            medians[tier]["contacts_per_s"] / medians["sqlite"]["contacts_per_s"]
        )
    result["first_reply_not_in_memory"] = {tier: median_of(r) for tier, r in cold.items()}
    print(json.dumps(result, indent=2))


@contextlib.asynccontextmanager
async def fresh_schema(url: str) -> Any:
    """A DATABASE_URL for a schema of its own, dropped afterwards."""
    import uuid

    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}schema={schema}"
    finally:
        conn = await asyncpg.connect(url)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def first_reply(
    extra: dict[str, str],
    primed: int = 3000,
    probes: int = 1000,
    resident: int = 200,
    in_flight: int = 8,
) -> dict[str, float]:
    """Webhook -> reply for contacts the engine has dropped from memory: `primed` contacts
    write once (MAX_ACTORS=`resident`, so all but the last few hundred are dropped), then the
    first `probes` of them write again, `in_flight` at a time; each latency runs from the
    webhook's post to the fake provider receiving the reply. The fake runs in this process so
    both ends are read on one clock."""
    from aiohttp import web

    from tests.fakes.graph import FakeGraph

    graph = FakeGraph(clock=time.perf_counter)
    runner = web.AppRunner(graph.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    class Here:
        url = f"http://127.0.0.1:{port}/v25.0"

    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = engine_env(Path(tmp), Here(), MAX_ACTORS=str(resident), **extra)  # type: ignore[arg-type]
            server = Server(env, Path(tmp))
            await server.start()
            try:
                await post_all(server.url, bodies(0, primed, 1), 64)
                async with aiohttp.ClientSession() as session:
                    await until_sent(session, server.url, primed, timeout=600)
                    before = await scrape(session, server.url)
                posted: dict[str, float] = {}
                docs = []
                for n in range(probes):
                    phone = f"1{n:010d}"
                    raw, headers = signed(
                        body(change([text(phone, f"wamid.again.{n}", "hi")], number=NUMBER))
                    )
                    docs.append((phone, raw, headers))
                queue = list(reversed(docs))
                async with aiohttp.ClientSession() as session:

                    async def worker() -> None:
                        while queue:
                            phone, raw, headers = queue.pop()
                            posted[phone] = time.perf_counter()
                            async with session.post(
                                f"{server.url}/webhooks/whatsapp", data=raw, headers=headers
                            ) as r:
                                await r.read()
                                assert r.status == 200, r.status
                            while not any(
                                q["received"] > posted[phone]
                                for q in graph.requests[-in_flight * 4 :]
                                if q["body"].get("to") == f"+{phone}"
                            ):
                                await asyncio.sleep(0.0005)

                    await asyncio.gather(*(worker() for _ in range(in_flight)))
                    after = await scrape(session, server.url)
            finally:
                server.terminate()
    finally:
        await runner.cleanup()
    firsts: dict[str, float] = {}
    for q in graph.requests:
        phone = str(q["body"].get("to")).lstrip("+")
        if phone in posted and q["received"] > posted[phone] and phone not in firsts:
            firsts[phone] = q["received"] - posted[phone]
    latencies = list(firsts.values())
    assert len(latencies) == probes, len(latencies)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    figures = {
        "p50_ms": quantile(latencies, 0.5) * 1000,
        "p90_ms": quantile(latencies, 0.9) * 1000,
        "p99_ms": quantile(latencies, 0.99) * 1000,
    }
    if "REDIS_URL" in extra:  # where the snapshots came from (counted by the Redis tier)
        figures["snapshots_from_redis"] = delta('engine_redis_snapshot_reads_total{result="hit"}')
        figures["snapshots_from_store"] = delta('engine_redis_snapshot_reads_total{result="miss"}')
    return figures


if __name__ == "__main__":
    asyncio.run(main())
