"""Traffic statistics: a pure per-window collector and the report-stats loop.

The first post learns ``report_interval`` (integer nanoseconds); the loop re-arms when the
server changes it. Idle windows are not posted (Coder posts them for nothing), except a
periodic heartbeat so a changed interval is still learned.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from agent.backoff import Backoff
from agent.errors import WsagentError
from agent.logs import FailureThrottle, error_key
from agent.sdk.models import NANOS_PER_SECOND, Stats, StatsResponse

log = structlog.get_logger()

DEFAULT_INTERVAL: Final = 300.0
MIN_INTERVAL: Final = 0.1
MAX_INTERVAL: Final = 24 * 3600.0
HEARTBEAT_EVERY_WINDOWS: Final = 6


class StatsCollector:
    """Counts traffic per window. Sessions call ``record_*``; the reporter takes windows."""

    def __init__(self) -> None:
        self._reset()
        self._active: dict[str, str] = {}

    def _reset(self) -> None:
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.tx_packets = 0
        self._window_sessions: dict[str, str] = {}

    def session_opened(self, session_id: str, proto: str) -> None:
        self._active[session_id] = proto
        self._window_sessions[session_id] = proto

    def session_closed(self, session_id: str) -> None:
        self._active.pop(session_id, None)

    def record_rx(self, nbytes: int, messages: int = 1) -> None:
        self.rx_bytes += nbytes
        self.rx_packets += messages

    def record_tx(self, nbytes: int, messages: int = 1) -> None:
        self.tx_bytes += nbytes
        self.tx_packets += messages

    def take_window(self) -> Stats:
        """Return this window's deltas and start a new window.

        ``num_comms`` counts sessions active at any time during the window.
        """
        by_proto: dict[str, int] = {}
        for proto in self._window_sessions.values():
            by_proto[proto] = by_proto.get(proto, 0) + 1
        stats = Stats(
            conns_by_proto=by_proto,
            num_comms=len(self._window_sessions),
            rx_packets=self.rx_packets,
            rx_bytes=self.rx_bytes,
            tx_packets=self.tx_packets,
            tx_bytes=self.tx_bytes,
        )
        self._reset()
        self._window_sessions = dict(self._active)
        return stats


def interval_from_response(
    response: StatsResponse, current: float | None
) -> tuple[float, str | None]:
    """Validate the server's interval. Returns (interval, warning or None)."""
    seconds = response.report_interval_ns / NANOS_PER_SECOND
    fallback = current if current is not None else DEFAULT_INTERVAL
    if response.report_interval_ns <= 0:
        return fallback, f"non-positive report_interval {response.report_interval_ns}ns ignored"
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        return fallback, f"absurd report_interval {response.report_interval_ns}ns ignored"
    return seconds, None


PostStats = Callable[[Stats], Awaitable[StatsResponse]]


class StatsReporter:
    def __init__(
        self,
        post: PostStats,
        collector: StatsCollector,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._post = post
        self._collector = collector
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.interval: float | None = None
        self._throttle = FailureThrottle()

    async def _post_with_retry(self, stats: Stats) -> None:
        backoff = Backoff(0.1, 60.0, rng=self._rng)
        while True:
            try:
                response = await self._post(stats)
            except WsagentError as exc:
                if self._throttle.failure(error_key(exc), time.monotonic()) is not None:
                    log.warning("stats.post_failed", error=str(exc))
                await self._sleep(backoff.next_delay())
                continue
            self._throttle.success()
            interval, warning = interval_from_response(response, self.interval)
            if warning:
                log.warning("stats.interval_ignored", reason=warning)
            if interval != self.interval:
                log.info("stats.interval_set", seconds=interval)
                self.interval = interval
            return

    async def run(self) -> None:
        await self._post_with_retry(Stats())
        idle_windows = 0
        while True:
            assert self.interval is not None
            await self._sleep(self.interval)
            window = self._collector.take_window()
            if window.is_idle and window.num_comms == 0:
                idle_windows += 1
                if idle_windows < HEARTBEAT_EVERY_WINDOWS:
                    continue
            idle_windows = 0
            await self._post_with_retry(window)
