"""Ordered delivery per agent, without one agent holding up the others.

The bus reads every replica-to-replica message in one order. Delivering one can wait: a
request goes out on the agent's socket (up to the coordinator's write timeout when the
agent does not read), a claim closes an older socket. Done one after the other, a single
stalled agent would delay every routed request, claim and reply of every other agent on
the replica, and the bus's inbox would fill and drop them. So each agent gets a lane: its
messages are delivered one at a time in arrival order (a claim before the requests that
follow it), and lanes run side by side. A lane's task ends when its queue is empty.

Bounded: at most ``max_per_lane`` messages and ``max_lane_bytes`` wait in one lane (so
one stalled agent cannot take the room of all the others) and ``max_bytes`` in all of
them together; past any, :meth:`Lanes.put` refuses the message (the caller logs it, and
the asker gets its own timeout, as for any lost message).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")


class Lanes(Generic[T]):
    def __init__(
        self,
        deliver: Callable[[T], Awaitable[None]],
        *,
        max_per_lane: int,
        max_lane_bytes: int,
        max_bytes: int,
    ) -> None:
        self._deliver = deliver
        self.max_per_lane = max_per_lane
        self.max_lane_bytes = max_lane_bytes
        self.max_bytes = max_bytes
        self._queues: dict[str, deque[tuple[T, int]]] = {}
        self._lane_bytes: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bytes = 0

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def lanes(self) -> int:
        """Lanes with messages waiting or being delivered."""
        return len(self._queues)

    def put(self, key: str, message: T, size: int) -> bool:
        """Queue ``message`` on ``key``'s lane; False (nothing queued) when full."""
        queue = self._queues.get(key)
        if queue is not None and len(queue) >= self.max_per_lane:
            return False
        lane_bytes = self._lane_bytes.get(key, 0)
        if lane_bytes + size > self.max_lane_bytes or self._bytes + size > self.max_bytes:
            return False
        if queue is None:
            queue = self._queues[key] = deque()
            task = asyncio.create_task(self._run(key, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((message, size))
        self._lane_bytes[key] = lane_bytes + size
        self._bytes += size
        return True

    async def _run(self, key: str, queue: deque[tuple[T, int]]) -> None:
        try:
            while queue:
                message, size = queue[0]
                try:
                    await self._deliver(message)
                except Exception:
                    log.exception("bus.delivery_failed", lane=key[:64])
                finally:
                    queue.popleft()
                    self._bytes -= size
                    self._lane_bytes[key] -= size
        finally:
            # No await between the last check of the queue and this: a put() either came
            # before (and was delivered) or finds no lane and starts a new one.
            for _, size in queue:  # cancelled mid-way
                self._bytes -= size
            queue.clear()
            if self._queues.get(key) is queue:
                del self._queues[key]
                del self._lane_bytes[key]

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
