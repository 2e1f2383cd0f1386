"""agent.clock and the FakeClock the state-machine tests run on."""

from __future__ import annotations

import asyncio

import pytest

from agent.clock import SYSTEM_CLOCK, sleep_unless_set
from tests.fakes.clock import FakeClock


async def test_sleep_unless_set_sleeps_the_whole_time_when_nothing_happens() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    start = clock.now
    assert await clock.run(sleep_unless_set(clock, event, 30.0)) is False
    assert clock.now - start == 30.0


async def test_sleep_unless_set_returns_when_the_event_is_set() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    sleeper = asyncio.create_task(sleep_unless_set(clock, event, 30.0))
    await clock.advance(10.0)
    assert not sleeper.done()
    event.set()
    await clock.settle()
    assert sleeper.done() and sleeper.result() is True
    assert clock.next_wakeup is None  # the cut-short sleep left nothing behind


async def test_sleep_unless_set_with_the_event_already_set_does_not_sleep() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    event.set()
    assert await sleep_unless_set(clock, event, 30.0) is True
    assert clock.sleeps == []


async def test_fake_clock_wakes_sleepers_in_order_at_their_own_instants() -> None:
    clock = FakeClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 1.0), ("c", 5.0))]
    await clock.advance(3.0)
    assert woke == [("a", 1.0), ("b", 2.0)]
    assert clock.now == 3.0
    await clock.advance(2.0)
    assert woke[-1] == ("c", 5.0)
    await asyncio.gather(*tasks)


async def test_fake_clock_wall_time_moves_with_it() -> None:
    clock = FakeClock(start=0.0, wall=1_000.0)
    await clock.advance(5.0)
    assert clock.time() == 1_005.0 and clock.monotonic() == 5.0


async def test_run_until_fails_when_nothing_sleeps() -> None:
    clock = FakeClock()
    with pytest.raises(AssertionError, match="nothing is sleeping"):
        await clock.run_until(lambda: False, within=10.0)


def test_system_clock_reads_real_time() -> None:
    assert SYSTEM_CLOCK.monotonic() > 0 and SYSTEM_CLOCK.time() > 1_600_000_000
