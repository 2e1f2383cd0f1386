"""Background tasks that run until shutdown and are restarted when they crash."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import structlog

from agent.clock import Clock
from agent.retry import FailureThrottle, error_key

log = structlog.get_logger()

# A background task that crashes is restarted after this long (and logged, throttled).
TASK_RESTART_DELAY: Final = 5.0

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    def __init__(self, clock: Clock, restart_delay: float = TASK_RESTART_DELAY) -> None:
        self._clock = clock
        self.restart_delay = restart_delay
        self._tasks: set[asyncio.Task[None]] = set()
        self._step_throttle = FailureThrottle()

    def start(self, name: str, factory: TaskFactory) -> asyncio.Task[None]:
        """Run ``factory()`` in the background until shutdown, restarting it if it crashes.

        Cancel the returned task to stop it early; :meth:`stop` cancels whatever is left.
        """
        task = asyncio.create_task(self._supervise(name, factory), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(self, name: str, factory: TaskFactory) -> None:
        throttle = FailureThrottle()
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a component's bug must not take the agent down
                if throttle.failure(error_key(exc), self._clock.monotonic()) is not None:
                    log.error("agent.task_crashed", task=name, error=str(exc), exc_info=exc)
            await self._clock.sleep(self.restart_delay)

    async def isolate(self, name: str, step: Awaitable[None]) -> None:
        """Await one component's ``step``; if it fails, log it (throttled) and return.

        A component that fails to take the new metadata must not keep the agent off the
        coordinate socket: the attempt goes on.
        """
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            now = self._clock.monotonic()
            if self._step_throttle.failure(error_key(exc), now) is not None:
                log.error("agent.metadata_hook_failed", hook=name, error=str(exc), exc_info=exc)

    async def stop(self, limit: float) -> None:
        """Cancel every task and wait at most ``limit`` seconds for them to finish."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=limit)
