"""Coalesced agent metadata (controlplane/metadatabatch.py): readers never see a value
vanish while its write is under way, and a failed or cancelled write loses nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

from controlplane.metadatabatch import MetadataBatcher
from controlplane.store.base import Store
from controlplane.store.records import MetadataRecord

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def record(agent: str, key: str, value: str) -> MetadataRecord:
    return MetadataRecord(agent, key, value, "", WHEN)


class GatedStore:
    """A store whose writes wait until the test lets them finish (or fail)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = False
        self.written: list[list[MetadataRecord]] = []

    async def upsert_agent_metadata(self, rows: list[MetadataRecord]) -> None:
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise OSError("disk I/O error (injected)")
        self.written.append(rows)


def batcher(store: GatedStore) -> MetadataBatcher:
    # A tick longer than any test: writes happen only when the test flushes.
    return MetadataBatcher(cast(Store, cast(Any, store)), interval=3600)


async def test_a_value_stays_visible_while_its_write_is_under_way() -> None:
    store = GatedStore()
    meta = batcher(store)
    meta.put(record("a", "load", "9.9"))
    flush = asyncio.create_task(meta.flush())
    await asyncio.wait_for(store.started.wait(), 5)
    # Mid-write: no longer pending, not yet stored, and still what a reader sees.
    assert meta.pending_for("a")["load"].value == "9.9"
    meta.put(record("a", "load", "10.0"))  # a newer post during the write wins
    assert meta.pending_for("a")["load"].value == "10.0"
    store.release.set()
    await asyncio.wait_for(flush, 5)
    assert [[r.value for r in rows] for rows in store.written] == [["9.9"]]
    assert meta.pending_for("a")["load"].value == "10.0"
    await meta.close()
    assert [r.value for r in store.written[-1]] == ["10.0"]
    assert meta.pending_for("a") == {}


async def test_a_failed_write_keeps_values_no_newer_post_replaced() -> None:
    store = GatedStore()
    store.fail = True
    store.release.set()
    meta = batcher(store)
    meta.put(record("a", "load", "1"))
    meta.put(record("a", "cpu", "2"))
    meta.put(record("b", "load", "3"))
    await meta.flush()
    assert store.written == [] and meta.writes == 0
    assert {k: r.value for k, r in meta.pending_for("a").items()} == {"load": "1", "cpu": "2"}
    store.fail = False
    await meta.flush()
    assert sorted((r.agent_id, r.key, r.value) for r in store.written[0]) == [
        ("a", "cpu", "2"),
        ("a", "load", "1"),
        ("b", "load", "3"),
    ]
    assert meta.writes == 1 and meta.rows_written == 3
    await meta.close()


async def test_a_second_flush_waits_for_the_write_under_way() -> None:
    store = GatedStore()
    meta = batcher(store)
    meta.put(record("a", "load", "1"))
    first = asyncio.create_task(meta.flush())
    await asyncio.wait_for(store.started.wait(), 5)
    meta.put(record("a", "load", "2"))
    second = asyncio.create_task(meta.flush())
    await asyncio.sleep(0)
    assert not second.done()  # behind the lock, not returning early with "2" unwritten
    store.release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [[r.value for r in rows] for rows in store.written] == [["1"], ["2"]]
    await meta.close()


async def test_closing_during_a_write_still_writes_every_value() -> None:
    store = GatedStore()
    meta = MetadataBatcher(cast(Store, cast(Any, store)), interval=0)
    meta.put(record("a", "load", "1"))  # the background tick starts writing at once
    await asyncio.wait_for(store.started.wait(), 5)
    close = asyncio.create_task(meta.close())  # cancels the tick mid-write
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.wait_for(close, 5)
    assert [r.value for r in store.written[-1]] == ["1"]
