"""One timer for every coordinate socket's connection refresh.

Every connected agent's row is refreshed (``last_connected_at``) every
``agent_heartbeat_interval`` (3 s), after checking that its build is still the latest and
its token still valid, so a revoked token or a new build ends the socket. With a task and
a timer per socket, 5,000 agents meant 1,667 wake-ups a second, each with its own store
reads and its own hand-off to a shared write. Here the sockets' due times are rounded up
to ticks of a tenth of the interval (at most 0.25 s): one task wakes once per tick, reads
the store's auth version once for every socket due, and writes their refreshes in one
transaction. A refresh still lands long before the agent would count as inactive (twice
the interval).

:class:`RefreshSchedule` is the pure part (due times, no clock of its own);
:class:`ConnectionRefresher` runs it against the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Generic, TypeVar

import structlog
from aiohttp import web

from controlplane.coordinator import Coordinator, Peer
from controlplane.store.base import Store

log = structlog.get_logger()

MAX_TICK: Final = 0.25  # seconds: how late a refresh may run to share its tick's write
CLOSE_TIMEOUT: Final = 15.0  # seconds a refused socket's close may take

T = TypeVar("T")


class RefreshSchedule(Generic[T]):
    """When each watched item is next due, rounded up to a tick."""

    def __init__(self, interval: float, tick: float | None = None) -> None:
        self.interval = interval
        self.tick = tick if tick is not None else min(MAX_TICK, interval / 10)
        self._due: dict[T, float] = {}
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties never compare the items themselves

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, item: object) -> bool:
        return item in self._due

    def add(self, item: T, now: float) -> None:
        """Due one interval from ``now`` (on the tick at or after it)."""
        self._set(item, math.ceil((now + self.interval) / self.tick) * self.tick)

    def expedite(self, item: T, now: float) -> None:
        """Due at once, if watched."""
        if item in self._due:
            self._set(item, now)

    def discard(self, item: T) -> None:
        self._due.pop(item, None)  # its heap entry is skipped when it surfaces

    def next_due(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float) -> list[T]:
        """Remove and return every item due at ``now``; :meth:`add` them back once
        checked."""
        taken: list[T] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return taken
            _, _, item = heapq.heappop(self._heap)
            del self._due[item]
            taken.append(item)

    def _set(self, item: T, due: float) -> None:
        self._due[item] = due
        heapq.heappush(self._heap, (due, next(self._order), item))

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)


@dataclass(eq=False)
class WatchedSocket:
    """One coordinate socket and what its refresh re-checks."""

    agent_id: str
    workspace_id: str
    build_number: int
    token: str
    peer: Peer
    checked_version: int | None = None  # the store's auth version at the last build check
    # A revocation arrived while this socket's check was under way: check again at once.
    recheck_requested: bool = False
    closing: asyncio.Task[object] | None = field(default=None, repr=False)


class ConnectionRefresher:
    def __init__(self, store: Store, coordinator: Coordinator, interval: float) -> None:
        self._store = store
        self._coordinator = coordinator
        self._schedule: RefreshSchedule[WatchedSocket] = RefreshSchedule(interval)
        self._by_agent: dict[str, set[WatchedSocket]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        coordinator.on_recheck = self.recheck

    def watch(self, socket: WatchedSocket) -> None:
        loop = asyncio.get_running_loop()
        self._schedule.add(socket, loop.time())
        self._by_agent.setdefault(socket.agent_id, set()).add(socket)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="server.connection_refresher")
        if len(self._schedule) == 1:
            self._wake.set()  # the timer was off; later sockets are due after earlier ones

    def forget(self, socket: WatchedSocket) -> None:
        self._schedule.discard(socket)
        sockets = self._by_agent.get(socket.agent_id)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._by_agent[socket.agent_id]

    def recheck(self, agent_id: str) -> None:
        """A token of this agent was revoked somewhere: its sockets check now."""
        now = asyncio.get_running_loop().time()
        for socket in self._by_agent.get(agent_id, ()):
            if socket in self._schedule:
                self._schedule.expedite(socket, now)
            else:  # being checked now, perhaps past its token lookup
                socket.recheck_requested = True
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._schedule.next_due()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await self._wake.wait()
            self._wake.clear()
            batch = self._schedule.take_due(loop.time())
            if not batch:
                continue
            try:
                await self.check(batch)
            except Exception:
                # One tick's surprise must not end every socket's refreshes for good.
                log.exception("agent.refresh_failed", agents=len(batch))
            finally:
                self.reschedule(batch, loop.time())

    def reschedule(self, batch: Iterable[WatchedSocket], now: float) -> None:
        """After a check: the sockets still open are due one interval on, or at once if
        a revocation arrived while they were being checked."""
        for socket in batch:
            if socket.closing is None and socket in self._by_agent.get(socket.agent_id, ()):
                self._schedule.add(socket, now)
                if socket.recheck_requested:
                    socket.recheck_requested = False
                    self._schedule.expedite(socket, now)

    async def check(self, batch: Iterable[WatchedSocket]) -> None:
        """Close the sockets whose build is outdated or whose token is no longer valid;
        refresh the rest in one write."""
        store = self._store
        refreshed: set[str] = set()
        try:
            # Unchanged since a socket's last check: no build and no token changed
            # anywhere, so its build is still the latest and its token lookup below
            # is a cache hit.
            version = await store.auth_version()
        except Exception as exc:
            log.warning("agent.refresh_failed", error=str(exc))
            return
        builds: dict[str, int | None] = {}
        for socket in batch:
            try:
                if version is None or version != socket.checked_version:
                    if socket.workspace_id not in builds:
                        workspace = await store.get_workspace(socket.workspace_id)
                        builds[socket.workspace_id] = (
                            None if workspace is None else workspace.latest_build
                        )
                    if builds[socket.workspace_id] != socket.build_number:
                        self._refuse(socket, 1001, b"build is outdated")
                        continue
                    socket.checked_version = version
                # A revoked or expired token ends the session: the agent must
                # authenticate again (cloud agents re-exchange their identity).
                if await store.agent_by_token(socket.token) is None:
                    self._refuse(socket, 1008, b"agent token revoked or expired")
                    continue
            except Exception as exc:
                # A store hiccup (a lock held too long by another writer) must not end
                # the refreshes: the agent would look disconnected with its socket open.
                log.warning("agent.heartbeat_failed", agent_id=socket.agent_id, error=str(exc))
                continue
            if self._coordinator.is_current(socket.agent_id, socket.peer):
                refreshed.add(socket.agent_id)
        if not refreshed:
            return
        try:
            await store.agent_heartbeats(sorted(refreshed), datetime.now(UTC))
        except Exception as exc:
            log.warning("agent.heartbeats_failed", agents=len(refreshed), error=str(exc))

    def _refuse(self, socket: WatchedSocket, code: int, message: bytes) -> None:
        self.forget(socket)
        closing = socket.closing = asyncio.create_task(
            socket.peer.ws.close(code=code, message=message), name="server.refuse_socket"
        )
        # Retrieved even if the handler's wait timed out (no "never retrieved").
        closing.add_done_callback(lambda task: task.cancelled() or task.exception())


REFRESHER: web.AppKey[ConnectionRefresher] = web.AppKey("connection_refresher")
