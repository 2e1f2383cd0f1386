"""The agent's one source of time: monotonic and wall time, and sleeping.

Every component that waits, retries or measures an age takes a :class:`Clock` from the
composition root instead of calling :mod:`time` or :func:`asyncio.sleep` itself, so the
state machines (reconnect, backoff, lifecycle retry, stats windows, idle timeouts) can be
driven by a fake clock in tests without real sleeps.

Deadlines of network I/O (``asyncio.timeout``) stay on the event loop's own clock: they
bound real sockets, which only real time can time out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final, Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for intervals and deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for timestamps shown to people)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """Real time: :func:`time.monotonic` (the event loop's own clock on Linux)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: Final = SystemClock()


async def sleep_unless_set(clock: Clock, event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` on ``clock``, or less if ``event`` is set first.

    True when the event cut the sleep short (or was already set).
    """
    if event.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()
    return event.is_set()
