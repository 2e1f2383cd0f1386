"""agent.supervisor on a FakeClock: crashed tasks restart after the delay, logged once;
a failing step is isolated from the attempt."""

from __future__ import annotations

import asyncio
import itertools

from structlog.testing import capture_logs

from agent.supervisor import TASK_RESTART_DELAY, Supervisor
from tests.fakes.clock import FakeClock


async def test_a_crashing_task_restarts_after_the_delay_and_is_logged_once() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock)
    runs: list[float] = []

    async def component() -> None:
        runs.append(clock.now)
        if len(runs) < 4:
            raise RuntimeError("bug")
        await asyncio.Event().wait()

    with capture_logs() as logs:
        supervisor.start("flaky", component)
        await clock.run_until(lambda: len(runs) == 4, within=4 * TASK_RESTART_DELAY)
        await supervisor.stop(1.0)
    assert [b - a for a, b in itertools.pairwise(runs)] == [TASK_RESTART_DELAY] * 3
    crashes = [e for e in logs if e["event"] == "agent.task_crashed"]
    assert len(crashes) == 1 and crashes[0]["task"] == "flaky"


async def test_a_task_that_returns_is_not_restarted() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock)
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    task = supervisor.start("once", once)
    await clock.settle()
    assert task.done() and runs == [1]
    assert clock.next_wakeup is None


async def test_stop_cancels_every_task() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    task = supervisor.start("forever", forever)
    await clock.settle()
    await supervisor.stop(1.0)
    assert cancelled.is_set() and task.cancelled()


async def test_a_failing_step_is_logged_throttled_and_does_not_raise() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock)

    async def step() -> None:
        raise ValueError("cannot take the metadata")

    with capture_logs() as logs:
        for _ in range(3):
            await supervisor.isolate("workspace_start", step())
            await clock.advance(1.0)
    failures = [e for e in logs if e["event"] == "agent.metadata_hook_failed"]
    assert len(failures) == 1
    assert failures[0]["hook"] == "workspace_start"
