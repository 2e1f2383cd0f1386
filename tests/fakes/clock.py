"""FakeClock: virtual time for the agent's state machines (agent.clock.Clock).

``sleep`` parks the caller until the test moves the clock past its wake-up; nothing waits
in real time. Between wake-ups the event loop runs every ready task until it parks again,
so each step of a retry loop or a ticker happens at its own virtual instant.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Turns of the event loop that let woken tasks run until they park again. Pure code needs
# a few per await chain; this leaves ample room and costs microseconds.
SETTLE_TURNS = 50


class FakeClock:
    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []  # every sleep asked for, in order

    # -------------------------------------------------------------- agent.clock.Clock

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._seq), future))
        try:
            await future
        finally:
            future.cancel()  # a cancelled sleeper leaves no wake-up behind that matters

    # -------------------------------------------------------------- driving it

    @property
    def next_wakeup(self) -> float | None:
        """When the earliest live sleeper wakes, or None if nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def settle(self) -> None:
        """Let every ready task run until it parks again; no virtual time passes."""
        for _ in range(SETTLE_TURNS):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        await self.advance_to(self.now + seconds)

    async def advance_to(self, t: float) -> None:
        """Move to ``t``, waking each sleeper due on the way at its own instant."""
        await self.settle()
        while (wake := self.next_wakeup) is not None and wake <= t:
            _, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            future.set_result(None)
            await self.settle()
        self.now = max(self.now, t)

    async def step(self) -> bool:
        """Jump to the next wake-up (and wake everything due then). False if none."""
        await self.settle()
        wake = self.next_wakeup
        if wake is None:
            return False
        await self.advance_to(wake)
        return True

    async def run_until(
        self, predicate: Callable[[], bool], *, within: float, message: str = ""
    ) -> float:
        """Step through virtual time until ``predicate()`` holds; return the virtual time.

        Fails if it does not hold within ``within`` virtual seconds or nothing sleeps.
        """
        deadline = self.now + within
        await self.settle()
        while not predicate():
            wake = self.next_wakeup
            if wake is None:
                raise AssertionError(f"nothing is sleeping and it never held: {message}")
            if wake > deadline:
                raise AssertionError(f"not within {within} virtual seconds: {message}")
            await self.advance_to(wake)
        return self.now

    async def run(self, awaitable: Awaitable[T], *, within: float = 24 * 3600.0) -> T:
        """Run ``awaitable`` to completion, moving virtual time whenever it sleeps."""
        task = asyncio.ensure_future(awaitable)
        try:
            await self.run_until(task.done, within=within, message="task did not finish")
        finally:
            if not task.done():
                task.cancel()
        return task.result()
