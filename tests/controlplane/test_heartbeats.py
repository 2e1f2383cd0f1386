"""The coordinate sockets' refreshes share one store write (controlplane/heartbeats.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, cast

import pytest

from controlplane.heartbeats import HeartbeatBatcher
from controlplane.store.base import Store


class RecordingStore:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    async def agent_heartbeats(self, agent_ids: list[str], now: datetime) -> None:
        self.calls.append(agent_ids)
        if self.fail:
            raise OSError("disk I/O error (injected)")


def batcher(store: RecordingStore) -> HeartbeatBatcher:
    return HeartbeatBatcher(cast(Store, cast(Any, store)), interval=0.1)


async def test_refreshes_requested_together_are_one_write() -> None:
    store = RecordingStore()
    beats = batcher(store)
    await asyncio.gather(*(beats.refresh(agent) for agent in ("c", "a", "b", "a")))
    assert store.calls == [["a", "b", "c"]]
    await beats.refresh("d")  # a later refresh starts a new batch
    assert store.calls == [["a", "b", "c"], ["d"]]
    await beats.close()


async def test_a_failed_write_reaches_every_waiter_and_the_next_batch_runs() -> None:
    store = RecordingStore(fail=True)
    beats = batcher(store)
    results = await asyncio.gather(beats.refresh("a"), beats.refresh("b"), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    store.fail = False
    await beats.refresh("a")
    assert store.calls == [["a", "b"], ["a"]]
    await beats.close()


async def test_a_cancelled_waiter_does_not_cancel_the_shared_write() -> None:
    store = RecordingStore()
    beats = batcher(store)
    first = asyncio.create_task(beats.refresh("a"))
    second = asyncio.create_task(beats.refresh("b"))
    await asyncio.sleep(0)
    first.cancel()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.calls == [["a", "b"]]
    await beats.close()
