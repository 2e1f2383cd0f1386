"""The coordinate sockets' refreshes: one timer, ticks, batched checks
(controlplane/refresher.py). The schedule is pure; the checks run against a recording
store (the store is not what is tested here; the e2e tests run the real ones)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pytest

from controlplane.coordinator import Coordinator, Peer
from controlplane.refresher import ConnectionRefresher, RefreshSchedule, WatchedSocket
from controlplane.store.base import Store
from tests.conftest import poll_until


def test_due_times_round_up_to_ticks_so_sockets_share_a_check() -> None:
    schedule: RefreshSchedule[str] = RefreshSchedule(interval=3.0)
    assert schedule.tick == 0.25
    schedule.add("a", now=10.01)
    schedule.add("b", now=10.2)
    schedule.add("c", now=10.3)
    assert schedule.next_due() == 13.25
    assert schedule.take_due(13.24) == []
    assert sorted(schedule.take_due(13.25)) == ["a", "b"]
    assert schedule.take_due(13.4) == []
    assert schedule.take_due(13.5) == ["c"]
    assert len(schedule) == 0 and schedule.next_due() is None


def test_short_intervals_get_short_ticks() -> None:
    assert RefreshSchedule[str](interval=0.5).tick == pytest.approx(0.05)


def test_discarded_items_are_never_due_and_expedite_ignores_them() -> None:
    schedule: RefreshSchedule[str] = RefreshSchedule(interval=1.0)
    schedule.add("a", now=0.0)
    schedule.add("b", now=0.0)
    schedule.discard("a")
    schedule.expedite("a", now=0.5)
    assert "a" not in schedule
    assert schedule.take_due(5.0) == ["b"]


def test_expedite_makes_an_item_due_now_and_drops_its_old_due_time() -> None:
    schedule: RefreshSchedule[str] = RefreshSchedule(interval=3.0)
    schedule.add("a", now=0.0)
    schedule.add("b", now=0.0)
    schedule.expedite("b", now=1.0)
    assert schedule.next_due() == 1.0
    assert schedule.take_due(1.0) == ["b"]
    assert schedule.take_due(3.0) == ["a"]  # "b" was taken: its old entry is stale
    assert schedule.take_due(100.0) == []


def test_re_adding_moves_the_due_time() -> None:
    schedule: RefreshSchedule[str] = RefreshSchedule(interval=1.0, tick=1.0)
    schedule.add("a", now=0.0)
    schedule.add("a", now=5.0)
    assert schedule.take_due(1.0) == []
    assert schedule.take_due(6.0) == ["a"]


@dataclass
class Workspace:
    latest_build: int


@dataclass
class RecordingStore:
    builds: dict[str, int]
    tokens: set[str]
    version: int = 1
    fail_reads: bool = False
    reads: list[str] = field(default_factory=list)
    writes: list[list[str]] = field(default_factory=list)

    async def auth_version(self) -> int:
        self.reads.append("auth_version")
        if self.fail_reads:
            raise OSError("database is locked (injected)")
        return self.version

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        self.reads.append(f"workspace {workspace_id}")
        build = self.builds.get(workspace_id)
        return None if build is None else Workspace(build)

    async def agent_by_token(self, token: str) -> object | None:
        self.reads.append(f"token {token}")
        return object() if token in self.tokens else None

    async def agent_heartbeats(self, agent_ids: list[str], now: datetime) -> None:
        self.writes.append(agent_ids)


class FakeSocket:
    def __init__(self) -> None:
        self.closed: tuple[int, bytes] | None = None

    async def close(self, *, code: int, message: bytes) -> bool:
        self.closed = (code, message)
        return True


def watched(coordinator: Coordinator, agent: str, workspace: str, token: str) -> WatchedSocket:
    peer = Peer(ws=cast(Any, FakeSocket()))
    coordinator._agents[agent] = peer  # connected here, as serve_agent would record it
    return WatchedSocket(agent, workspace, build_number=1, token=token, peer=peer)


def refresher(store: RecordingStore) -> tuple[ConnectionRefresher, Coordinator]:
    coordinator = Coordinator()
    return ConnectionRefresher(cast(Store, cast(Any, store)), coordinator, 3.0), coordinator


async def test_a_batch_reads_the_version_once_and_writes_once() -> None:
    store = RecordingStore(builds={"w1": 1, "w2": 1}, tokens={"t1", "t2", "t3"})
    beats, coordinator = refresher(store)
    batch = [
        watched(coordinator, "c", "w1", "t1"),
        watched(coordinator, "a", "w1", "t2"),
        watched(coordinator, "b", "w2", "t3"),
    ]
    await beats.check(batch)
    assert store.reads.count("auth_version") == 1
    assert store.reads.count("workspace w1") == 1  # once per workspace in the batch
    assert store.writes == [["a", "b", "c"]]
    # Nothing changed since: no build is read again.
    store.reads.clear()
    await beats.check(batch)
    assert store.reads == ["auth_version", "token t1", "token t2", "token t3"]


async def test_outdated_builds_and_dead_tokens_close_their_sockets_only() -> None:
    store = RecordingStore(builds={"w1": 2, "w2": 1}, tokens={"t2"})
    beats, coordinator = refresher(store)
    outdated = watched(coordinator, "a", "w1", "t1")
    revoked = watched(coordinator, "b", "w2", "t9")
    fine = watched(coordinator, "c", "w2", "t2")
    await beats.check([outdated, revoked, fine])
    assert outdated.closing is not None and revoked.closing is not None
    await asyncio.gather(outdated.closing, revoked.closing)
    assert cast(Any, outdated.peer.ws).closed == (1001, b"build is outdated")
    assert cast(Any, revoked.peer.ws).closed == (1008, b"agent token revoked or expired")
    assert fine.closing is None
    assert store.writes == [["c"]]


async def test_a_replaced_socket_is_checked_but_not_refreshed() -> None:
    store = RecordingStore(builds={"w": 1}, tokens={"t"})
    beats, coordinator = refresher(store)
    old = watched(coordinator, "a", "w", "t")
    watched(coordinator, "a", "w", "t")  # a newer socket of the same agent
    await beats.check([old])
    assert store.writes == []
    assert old.closing is None


async def test_a_failed_read_skips_the_batch_and_the_next_one_runs() -> None:
    store = RecordingStore(builds={"w": 1}, tokens={"t"}, fail_reads=True)
    beats, coordinator = refresher(store)
    socket = watched(coordinator, "a", "w", "t")
    await beats.check([socket])
    assert store.writes == []
    store.fail_reads = False
    await beats.check([socket])
    assert store.writes == [["a"]]


async def test_a_revocation_during_a_check_is_checked_again_at_once() -> None:
    store = RecordingStore(builds={"w": 1}, tokens={"t"})
    beats, coordinator = refresher(store)
    socket = watched(coordinator, "a", "w", "t")
    beats.watch(socket)
    loop = asyncio.get_running_loop()
    taken = beats._schedule.take_due(loop.time() + 10)  # the check has started
    assert taken == [socket]
    coordinator.recheck("a")  # arrives mid-check: the socket is not in the schedule
    assert socket.recheck_requested
    now = loop.time() + 10
    beats.reschedule(taken, now)
    assert beats._schedule.take_due(now) == [socket]  # due at once, not an interval on
    beats.reschedule([socket], now)
    assert beats._schedule.take_due(now) == []
    await beats.close()


async def test_forgotten_and_refused_sockets_are_not_rescheduled() -> None:
    store = RecordingStore(builds={"w": 1}, tokens=set())
    beats, coordinator = refresher(store)
    refused = watched(coordinator, "a", "w", "t")
    gone = watched(coordinator, "b", "w", "t")
    beats.watch(refused)
    beats.watch(gone)
    loop = asyncio.get_running_loop()
    batch = beats._schedule.take_due(loop.time() + 10)
    await beats.check([refused])
    beats.forget(gone)
    beats.reschedule(batch, loop.time())
    assert len(beats._schedule) == 0
    assert refused.closing is not None
    await refused.closing
    await beats.close()


class FlakyCoordinator(Coordinator):
    """Fails the first currency check: a surprise inside a tick, outside the store."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def is_current(self, agent_id: str, peer: Peer) -> bool:
        self.checks += 1
        if self.checks == 1:
            raise RuntimeError("injected")
        return super().is_current(agent_id, peer)


async def test_a_failed_tick_does_not_end_the_refreshes() -> None:
    store = RecordingStore(builds={"w": 1}, tokens={"t"})
    coordinator = FlakyCoordinator()
    beats = ConnectionRefresher(cast(Store, cast(Any, store)), coordinator, interval=0.05)
    socket = watched(coordinator, "a", "w", "t")
    beats.watch(socket)
    try:
        await poll_until(lambda: store.writes, timeout=5, interval=0.01, message="no refresh")
    finally:
        await beats.close()
    assert coordinator.checks >= 2
    assert store.writes[0] == ["a"]
