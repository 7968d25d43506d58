"""Rows a store commits per second: one write per transaction, and the group commit's batches.

Run from the repository root with the test services up: `python bench/store.py`
(TEST_DATABASE_URL as the tests read it). Each write is what an actor's step commits: the
conversation's snapshot (an upsert) and one transcript row. It is measured on SQLite (a file in
a temporary folder) and on Postgres (a fresh schema), alternating, in transactions of 1, 100 and
1000 writes, written one transaction after another as the committer does; figures are medians
of the repeats, in rows per second (each write is two rows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.stores.postgres import PostgresStore  # noqa: E402
from adapters.stores.sqlite import SqliteStore  # noqa: E402
from engine.ports import Commit, ConversationRow, MessageRow, Store  # noqa: E402

PG = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROWS_PER_WRITE = 2


def write(i: int, run: str) -> Commit:
    key = f"106540352242922:1{i:010d}"
    snapshot = {"v": 2, "state": "menu", "slots": {"name": "Ana", "cart": [{"sku": "A", "q": 2}]}}
    row = ConversationRow(key, "106540352242922", "support", "menu", False, 1.0 + i, snapshot)
    message = MessageRow(f"{run}.{i}", key, "in", "106540352242922", "text", "hi", "received", 1.0)
    return Commit(row, [message])


async def rows_per_s(store: Store, batch: int, writes: int) -> float:
    run = uuid.uuid4().hex[:8]
    ops = [write(i, run) for i in range(writes)]
    started = time.perf_counter()
    for first in range(0, writes, batch):
        await store.write(ops[first : first + batch])
    return writes * ROWS_PER_WRITE / (time.perf_counter() - started)


async def measure(store: Store, sizes: dict[int, int]) -> dict[str, float]:
    await store.open()
    try:
        return {f"batch_{b}": await rows_per_s(store, b, n) for b, n in sizes.items()}
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = {1: 2000, 100: 20_000, 1000: 50_000}  # batch size -> writes
    runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs["sqlite"].append(await measure(SqliteStore(Path(tmp) / "s.sqlite3"), sizes))
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        try:
            runs["postgres"].append(await measure(PostgresStore(PG, schema=schema), sizes))
        finally:
            conn = await asyncpg.connect(PG)
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await conn.close()
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "rows_per_write": ROWS_PER_WRITE,
        "writes_per_batch_size": sizes,
    }
    for name, each in runs.items():
        result[f"{name}_rows_per_s"] = {
            k: round(statistics.median(r[k] for r in each)) for k in each[0]
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
