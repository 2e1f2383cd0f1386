"""Group the coordinate sockets' ``last_connected_at`` refreshes into one write.

Every connected agent's socket refreshes its row every ``agent_heartbeat_interval``
(3 s): at 2,000 agents that was 667 write transactions a second, each a hand-off to the
writer thread and a commit, about a third of the server's CPU under load (see
docs/benchmarks.md, "Load: many agents"). The sockets now hand their refresh to this
batcher, which writes every refresh requested within ``delay`` in one transaction. The
delay is a small fraction of the interval, so a refresh still lands long before the agent
would count as inactive (twice the interval).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from controlplane.store.base import Store

MAX_DELAY: Final = 0.25  # seconds a refresh may wait for others to share its commit


class HeartbeatBatcher:
    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._delay = min(MAX_DELAY, interval / 10)
        self._pending: set[str] = set()
        self._flushed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def refresh(self, agent_id: str) -> None:
        """Return once ``agent_id``'s refresh is committed; raise what the write raised."""
        self._pending.add(agent_id)
        if self._flushed is None:
            self._flushed = asyncio.get_running_loop().create_future()
            # Retrieve the exception even if every waiter went away (no "never retrieved").
            self._flushed.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._task = asyncio.create_task(self._flush(self._flushed))
        # Shielded: one socket closing must not cancel the others' shared write.
        await asyncio.shield(self._flushed)

    async def _flush(self, done: asyncio.Future[None]) -> None:
        await asyncio.sleep(self._delay)
        ids, self._pending, self._flushed = self._pending, set(), None
        try:
            await self._store.agent_heartbeats(sorted(ids), datetime.now(UTC))
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._flushed is not None and not self._flushed.done():
            self._flushed.cancel()


HEARTBEATS: web.AppKey[HeartbeatBatcher] = web.AppKey("heartbeats")
