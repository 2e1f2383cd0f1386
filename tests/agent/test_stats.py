"""agent.stats: the collector's windows and the report loop, with a fake post on a FakeClock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from agent.errors import TransportError
from agent.sdk.models import Stats, StatsResponse
from agent.stats import DEFAULT_INTERVAL, StatsCollector, StatsReporter, Window
from tests.fakes.clock import FakeClock

S = 1_000_000_000  # nanoseconds per second


class FakeServer:
    """report-stats answers from a script: an interval in ns, or an exception to raise."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.posted: list[Stats] = []

    async def post(self, stats: Stats) -> StatsResponse:
        self.posted.append(stats)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return StatsResponse(answer)


async def drive(
    reporter: StatsReporter, clock: FakeClock, limit: int, during: Callable[[int], None]
) -> None:
    """Run the reporter until it asks for its ``limit``-th sleep. ``during(i)`` happens
    while it sleeps the i-th time (0-based), before virtual time moves past that sleep."""
    task = asyncio.create_task(reporter.run())
    try:
        await clock.settle()
        while len(clock.sleeps) < limit:
            assert not task.done(), task
            during(len(clock.sleeps) - 1)
            await clock.step()
    finally:
        task.cancel()


async def run(
    server: FakeServer, limit: int, *, busy: bool = True
) -> tuple[StatsReporter, FakeClock]:
    """The reporter on a fake clock; with ``busy`` every window carries 100 bytes."""
    collector = StatsCollector()
    clock = FakeClock()
    reporter = StatsReporter(server.post, collector, clock=clock, rng=random.Random(0))
    await drive(reporter, clock, limit, lambda _: collector.record_rx(100) if busy else None)
    return reporter, clock


async def test_first_post_is_empty_and_learns_the_interval_in_nanoseconds() -> None:
    server = FakeServer(5 * S)
    reporter, sleep = await run(server, limit=2)
    assert server.posted[0] == Stats()
    assert reporter.interval == 5.0
    assert sleep.sleeps == [5.0, 5.0]


async def test_loop_re_arms_when_the_interval_changes() -> None:
    server = FakeServer(5 * S, 7 * S, 7 * S, 2 * S)
    _, sleep = await run(server, limit=5)
    assert sleep.sleeps == [5.0, 7.0, 7.0, 2.0, 2.0]
    assert all(s.rx_bytes == 100 for s in server.posted[1:])  # each window's delta


@pytest.mark.parametrize(
    "bad", [0, -5 * S, 1, 365 * 24 * 3600 * S], ids=["zero", "negative", "1ns", "a year"]
)
async def test_zero_negative_or_absurd_interval_is_ignored_with_a_warning(bad: int) -> None:
    server = FakeServer(5 * S, bad, 3 * S)
    with capture_logs() as logs:
        _, sleep = await run(server, limit=4)
    # Kept 5 s when the bad value came, then took the next valid one.
    assert sleep.sleeps == [5.0, 5.0, 3.0, 3.0]
    warnings = [e for e in logs if e["event"] == "stats.interval_ignored"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert str(bad) in warnings[0]["reason"]


async def test_bad_first_interval_falls_back_to_the_default() -> None:
    server = FakeServer(0)
    _, sleep = await run(server, limit=1)
    assert sleep.sleeps == [DEFAULT_INTERVAL]


async def test_failed_first_post_is_retried_with_backoff_and_logged_once() -> None:
    down = TransportError("POST", "http://cp/api/v2/workspaceagents/me/report-stats", "refused")
    server = FakeServer(down, down, down, down, 4 * S)
    with capture_logs() as logs:
        _, sleep = await run(server, limit=5)
    backoffs = sleep.sleeps[:4]
    assert all(0 < d <= 60 for d in backoffs)
    assert backoffs == sorted(backoffs)  # equal jitter: the ranges do not overlap
    assert sleep.sleeps[4] == 4.0
    assert len(server.posted) == 5
    assert [e["event"] for e in logs].count("stats.post_failed") == 1


async def test_no_post_for_an_empty_window_after_the_first() -> None:
    server = FakeServer(5 * S)
    _, sleep = await run(server, limit=20, busy=False)
    assert server.posted == [Stats()]  # only the post that learns the interval
    assert sleep.sleeps == [5.0] * 20


async def traffic_run(server: FakeServer, per_window: list[int]) -> None:
    """Each window carries the scripted bytes, from one session opened and closed in it."""
    collector = StatsCollector()
    clock = FakeClock()
    reporter = StatsReporter(server.post, collector, clock=clock, rng=random.Random(0))

    def during(i: int) -> None:
        nbytes = per_window[i]
        if nbytes:
            collector.session_opened(f"s{i + 1}", "reconnecting_pty")
            collector.record_rx(nbytes)
            collector.record_tx(2 * nbytes, messages=2)
            collector.session_closed(f"s{i + 1}")

    await drive(reporter, clock, len(per_window) + 1, during)


def landed(server: FakeServer, answers: list[int | Exception]) -> list[Stats]:
    """The posts that succeeded (answers are consumed in order)."""
    return [s for s, a in zip(server.posted, answers, strict=False) if isinstance(a, int)]


async def test_traffic_in_a_window_is_reported_once_exactly() -> None:
    per_window = [10, 0, 20, 30, 0, 0, 40]
    server = FakeServer(5 * S)
    await traffic_run(server, per_window)
    posted = server.posted[1:]
    assert [s.rx_bytes for s in posted] == [10, 20, 30, 40]  # empty windows are skipped
    assert [s.tx_bytes for s in posted] == [20, 40, 60, 80]
    assert [s.tx_packets for s in posted] == [2, 2, 2, 2]
    assert all(s.num_comms == 1 and s.conns_by_proto == {"reconnecting_pty": 1} for s in posted)
    assert sum(s.rx_bytes for s in posted) == sum(per_window)


async def test_a_failed_post_is_merged_into_the_next_window_never_dropped() -> None:
    down = TransportError("POST", "http://cp/api/v2/workspaceagents/me/report-stats", "refused")
    answers: list[int | Exception] = [5 * S, 5 * S, down, down, 5 * S, down, 5 * S]
    server = FakeServer(*answers)
    per_window = [1, 10, 100, 0, 1000, 10000]
    await traffic_run(server, per_window)
    ok = landed(server, answers)[1:]
    # Window 1 lands; 2 fails, 3 (2+3) fails, 4 is empty but carries 2+3, lands; 5 fails;
    # 6 carries 5 and lands. Every byte is reported once.
    assert [s.rx_bytes for s in ok] == [1, 110, 11000]
    assert sum(s.rx_bytes for s in ok) == sum(per_window)
    assert [s.num_comms for s in ok] == [1, 2, 2]  # a merge counts each session once
    assert [s.conns_by_proto for s in ok] == [{"reconnecting_pty": n} for n in (1, 2, 2)]


def test_window_merge_counts_a_session_seen_in_both_once() -> None:
    first = Window({"a": "ssh", "b": "ssh"}, rx_bytes=1, tx_bytes=2, rx_packets=1, tx_packets=1)
    later = Window({"b": "ssh", "c": "reconnecting_pty"}, rx_bytes=3, tx_bytes=4)
    merged = first.merge(later)
    assert merged == Window({"a": "ssh", "b": "ssh", "c": "reconnecting_pty"}, 4, 6, 1, 1)
    assert merged.to_stats().conns_by_proto == {"ssh": 2, "reconnecting_pty": 1}
    assert Window({"a": "ssh"}).is_empty and not later.is_empty


def test_collector_windows_are_deltas_and_count_sessions() -> None:
    collector = StatsCollector()
    collector.session_opened("a", "ssh")
    collector.session_opened("b", "reconnecting_pty")
    collector.record_rx(10)
    collector.record_tx(20, messages=2)
    collector.session_closed("a")
    first = collector.take_window()
    assert (first.rx_bytes, first.tx_bytes, first.rx_packets, first.tx_packets) == (10, 20, 1, 2)
    assert first.num_comms == 2
    assert first.conns_by_proto == {"ssh": 1, "reconnecting_pty": 1}
    second = collector.take_window()
    assert second.rx_bytes == 0 and second.num_comms == 1  # b is still open
