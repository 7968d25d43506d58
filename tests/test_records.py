"""The records contract (documents that actions keep), over every store backend."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from engine.errors import StoreRejected
from engine.ports import Record, Store
from tests.test_store import store

__all__ = ["store"]


def rec(key: str, kind: str = "order", **kw: object) -> Record:
    fields: dict[str, object] = {"data": {"n": 1}, "contact": "c1", "status": "draft", "at": 10.0}
    fields.update(kw)
    return Record(kind, key, **fields)  # type: ignore[arg-type]


async def test_a_record_is_written_once_at_version_zero(store: Store) -> None:
    assert await store.record("order", "a") is None
    assert await store.put_records([rec("a", data={"lines": ["₹ 1.50"], "q": None})])
    got = await store.record("order", "a")
    assert got == rec("a", data={"lines": ["₹ 1.50"], "q": None}, version=1)
    # a second create of the same key: refused, and the first kept
    assert not await store.put_records([rec("a", data={"n": 2})])
    assert (await store.record("order", "a")) == got


async def test_an_update_needs_the_version_it_read(store: Store) -> None:
    assert await store.put_records([rec("a")])
    first = await store.record("order", "a")
    assert first is not None
    assert await store.put_records([replace(first, status="confirmed", due=99.5)])
    assert not await store.put_records([replace(first, status="cancelled")])  # stale
    now = await store.record("order", "a")
    assert now is not None and (now.status, now.due, now.version) == ("confirmed", 99.5, 2)


async def test_several_records_are_written_all_or_none(store: Store) -> None:
    assert await store.put_records([rec("a")])
    # "b" is new, but "a" is stale: neither is written
    assert not await store.put_records([rec("b"), rec("a", data={"n": 3})])
    assert await store.record("order", "b") is None
    a = await store.record("order", "a")
    assert a is not None and a.data == {"n": 1}
    assert await store.put_records([rec("b"), replace(a, data={"n": 3}), rec("b", kind="x")])
    assert [r.key for r in await store.records("order")] == ["a", "b"]
    assert (await store.record("x", "b")) is not None


async def test_records_are_listed_newest_first_by_contact_and_status(store: Store) -> None:
    assert await store.put_records(
        [
            rec("a", at=1.0),
            rec("b", at=3.0, status="confirmed"),
            rec("c", at=2.0, contact="c2"),
            rec("d", at=3.0, kind="invoice"),
        ]
    )
    assert [r.key for r in await store.records("order")] == ["b", "c", "a"]
    assert [r.key for r in await store.records("order", contact="c1")] == ["b", "a"]
    assert [r.key for r in await store.records("order", status="draft")] == ["c", "a"]
    assert [r.key for r in await store.records("order", limit=1)] == ["b"]
    assert await store.records("order", contact="nobody") == []


async def test_due_records_soonest_first(store: Store) -> None:
    assert await store.put_records(
        [rec("a", due=50.0), rec("b", due=20.0), rec("c"), rec("d", due=80.0), rec("e", due=5.0)]
    )
    assert [r.key for r in await store.due_records("order", 50.0, 10)] == ["e", "b", "a"]
    assert [r.key for r in await store.due_records("order", 50.0, 1)] == ["e"]
    assert await store.due_records("invoice", 100.0, 10) == []


async def test_racing_creates_make_one_record(store: Store) -> None:
    results = await asyncio.gather(
        *(store.put_records([rec("a", data={"n": i})]) for i in range(8))
    )
    assert sum(results) == 1
    got = await store.record("order", "a")
    assert got is not None and got.version == 1


async def test_racing_updates_of_one_version_win_once(store: Store) -> None:
    assert await store.put_records([rec("a")])
    first = await store.record("order", "a")
    assert first is not None
    tries = [replace(first, data={"n": i}) for i in range(8)]
    results = await asyncio.gather(*(store.put_records([t]) for t in tries))
    assert sum(results) == 1


async def test_data_json_cannot_hold_is_refused(store: Store) -> None:
    with pytest.raises(StoreRejected):
        await store.put_records([rec("a", data={"x": object()})])
    assert await store.record("order", "a") is None
