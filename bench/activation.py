"""The read that activating a contact not in memory makes: its snapshot, from Postgres alone and
from Postgres behind Redis, measured in the same run on the same machine.

Run from the repository root with the test services up: `python bench/activation.py`
(TEST_DATABASE_URL, TEST_REDIS_URL as the tests read them). It commits N conversations with
snapshots of a realistic size (a cart of 5 items), then reads each once, in random order, the
way the engine's activation does (one at a time per contact, 32 contacts at once), and prints
the median and 99th percentile per read and the reads per second, for each tier.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.stores.postgres import PostgresStore  # noqa: E402
from adapters.stores.redis_cache import RedisCachedStore  # noqa: E402
from engine.ports import Commit, ConversationRow  # noqa: E402

PG = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CONTACTS = 5000
CONCURRENCY = 32


def snapshot(i: int) -> dict[str, Any]:
    cart = [{"sku": f"P{j}", "name": f"Pizza {j}", "price": ["tag:dec", "9.50"]} for j in range(5)]
    return {"v": 2, "number": "n", "flow": "order", "state": "review", "slots": {"cart": cart}}


async def reads(store: Any, keys: list[str]) -> list[float]:
    queue = list(keys)
    random.shuffle(queue)
    times: list[float] = []

    async def worker() -> None:
        while queue:
            key = queue.pop()
            started = time.perf_counter()
            row = await store.conversation(key)
            times.append(time.perf_counter() - started)
            assert row is not None

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return times


def summary(times: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
        "reads_per_s": len(times) / wall,
    }


async def main() -> None:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    pg = PostgresStore(PG, schema=schema)
    await pg.open()
    client = redis.from_url(REDIS)
    cached = RedisCachedStore(pg, client, dedupe_ttl=3600, prefix=f"bench:{schema}")
    await cached._learn_server()  # pg is open already
    keys = [f"n:{i}" for i in range(CONTACTS)]
    try:
        for start in range(0, CONTACTS, 500):  # through the cache: Redis gets the copies
            batch = [
                Commit(ConversationRow(k, "n", "order", "review", False, 1.0, snapshot(i)))
                for i, k in enumerate(keys[start : start + 500], start)
            ]
            await cached.write(batch)
        size = len(json.dumps(snapshot(0)))
        results: dict[str, Any] = {"contacts": CONTACTS, "snapshot_bytes": size}
        for name, store in (("postgres", pg), ("postgres+redis", cached), ("postgres ", pg)):
            started = time.perf_counter()
            times = await reads(store, keys)
            results[name.strip() + (" (again)" if name.endswith(" ") else "")] = summary(
                times, time.perf_counter() - started
            )
        results["redis_hits"] = cached.metrics.redis_reads.get("hit")
        print(json.dumps(results, indent=2))
    finally:
        await pg.close()
        async for key in client.scan_iter(f"bench:{schema}:*"):
            await client.delete(key)
        await client.aclose()
        conn = await asyncpg.connect(PG)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
