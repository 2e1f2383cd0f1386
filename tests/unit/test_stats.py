"""agent.stats: the collector's windows and the report loop, with a fake post and fake sleep."""

from __future__ import annotations

import random

import pytest
from structlog.testing import capture_logs

from agent.errors import TransportError
from agent.sdk.models import Stats, StatsResponse
from agent.stats import DEFAULT_INTERVAL, HEARTBEAT_EVERY_WINDOWS, StatsCollector, StatsReporter

S = 1_000_000_000  # nanoseconds per second


class Done(Exception):
    """Ends the reporter's endless loop from the fake sleep."""


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


class FakeSleep:
    """Records each sleep; ``busy`` adds traffic so every window is posted."""

    def __init__(self, collector: StatsCollector, limit: int, *, busy: bool = True) -> None:
        self.collector = collector
        self.limit = limit
        self.busy = busy
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if len(self.calls) >= self.limit:
            raise Done
        if self.busy:
            self.collector.record_rx(100)


async def run(
    server: FakeServer, limit: int, *, busy: bool = True
) -> tuple[StatsReporter, FakeSleep]:
    collector = StatsCollector()
    sleep = FakeSleep(collector, limit, busy=busy)
    reporter = StatsReporter(server.post, collector, rng=random.Random(0), sleep=sleep)
    with pytest.raises(Done):
        await reporter.run()
    return reporter, sleep


async def test_first_post_is_empty_and_learns_the_interval_in_nanoseconds() -> None:
    server = FakeServer(5 * S)
    reporter, sleep = await run(server, limit=2)
    assert server.posted[0] == Stats()
    assert reporter.interval == 5.0
    assert sleep.calls == [5.0, 5.0]


async def test_loop_re_arms_when_the_interval_changes() -> None:
    server = FakeServer(5 * S, 7 * S, 7 * S, 2 * S)
    _, sleep = await run(server, limit=5)
    assert sleep.calls == [5.0, 7.0, 7.0, 2.0, 2.0]
    assert all(s.rx_bytes == 100 for s in server.posted[1:])  # each window's delta


@pytest.mark.parametrize(
    "bad", [0, -5 * S, 1, 365 * 24 * 3600 * S], ids=["zero", "negative", "1ns", "a year"]
)
async def test_zero_negative_or_absurd_interval_is_ignored_with_a_warning(bad: int) -> None:
    server = FakeServer(5 * S, bad, 3 * S)
    with capture_logs() as logs:
        _, sleep = await run(server, limit=4)
    # Kept 5 s when the bad value came, then took the next valid one.
    assert sleep.calls == [5.0, 5.0, 3.0, 3.0]
    warnings = [e for e in logs if e["event"] == "stats.interval_ignored"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert str(bad) in warnings[0]["reason"]


async def test_bad_first_interval_falls_back_to_the_default() -> None:
    server = FakeServer(0)
    _, sleep = await run(server, limit=1)
    assert sleep.calls == [DEFAULT_INTERVAL]


async def test_failed_post_is_retried_with_backoff_and_logged_once() -> None:
    down = TransportError("POST", "http://cp/api/v2/workspaceagents/me/report-stats", "refused")
    server = FakeServer(down, down, down, down, 4 * S)
    with capture_logs() as logs:
        _, sleep = await run(server, limit=5)
    backoffs = sleep.calls[:4]
    assert all(0 < d <= 60 for d in backoffs)
    assert backoffs == sorted(backoffs)  # equal jitter: the ranges do not overlap
    assert sleep.calls[4] == 4.0
    assert len(server.posted) == 5
    assert [e["event"] for e in logs].count("stats.post_failed") == 1


async def test_idle_windows_are_skipped_but_a_heartbeat_still_learns_changes() -> None:
    server = FakeServer(5 * S, 9 * S)
    _, sleep = await run(server, limit=HEARTBEAT_EVERY_WINDOWS + 2, busy=False)
    # Only the first post and one heartbeat after HEARTBEAT_EVERY_WINDOWS idle windows.
    assert len(server.posted) == 2
    assert sleep.calls[:HEARTBEAT_EVERY_WINDOWS] == [5.0] * HEARTBEAT_EVERY_WINDOWS
    assert sleep.calls[HEARTBEAT_EVERY_WINDOWS] == 9.0


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
