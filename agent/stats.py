"""Traffic statistics: a pure per-window collector and the report-stats loop.

The first post learns ``report_interval`` (integer nanoseconds); the loop re-arms when the
server changes it. Two fixes over Coder:

* A window without traffic is not posted after the first post: the server stores nothing
  for zero rx and tx bytes anyway, and the requests cost it load (coder/coder#8064). A
  changed interval is therefore learned at the next window with traffic, which is the
  only kind of window the interval matters for.
* A window whose post failed is merged into the next one and posted with it, never
  dropped (Coder drops samples when its hand-off channel is full). So every byte of
  traffic is reported once: a post either landed, or its counts ride along with the next.
  (One case the wire cannot settle: a post the server stored whose answer was then lost
  is sent again with the next window; Coder's Stats carry no id to de-duplicate on.)
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from agent.clock import Clock
from agent.retry import Retry, is_retryable, traceback_fields
from agent.sdk.models import NANOS_PER_SECOND, Stats, StatsResponse

log = structlog.get_logger()

DEFAULT_INTERVAL: Final = 300.0
MIN_INTERVAL: Final = 0.1
MAX_INTERVAL: Final = 24 * 3600.0


@dataclass
class Window:
    """One window's counters, with the sessions seen in it (so a merge counts each once)."""

    sessions: dict[str, str] = field(default_factory=dict)
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0

    @property
    def is_empty(self) -> bool:
        # The server stores nothing without bytes (docs/protocol.md, "Stats"), so neither do
        # we post.
        return self.rx_bytes == 0 and self.tx_bytes == 0

    def merge(self, later: Window) -> Window:
        """This window followed by ``later``, as one. Pure."""
        return Window(
            {**self.sessions, **later.sessions},
            self.rx_bytes + later.rx_bytes,
            self.tx_bytes + later.tx_bytes,
            self.rx_packets + later.rx_packets,
            self.tx_packets + later.tx_packets,
        )

    def to_stats(self) -> Stats:
        by_proto: dict[str, int] = {}
        for proto in self.sessions.values():
            by_proto[proto] = by_proto.get(proto, 0) + 1
        return Stats(
            conns_by_proto=by_proto,
            num_comms=len(self.sessions),
            rx_packets=self.rx_packets,
            rx_bytes=self.rx_bytes,
            tx_packets=self.tx_packets,
            tx_bytes=self.tx_bytes,
        )


class StatsCollector:
    """Counts traffic per window. Sessions call ``record_*``; the reporter takes windows."""

    def __init__(self) -> None:
        self._reset()
        self._active: dict[str, str] = {}
        # Since start, never reset: read by the metrics endpoint.
        self.rx_bytes_total = 0
        self.tx_bytes_total = 0

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
        self.rx_bytes_total += nbytes

    def record_tx(self, nbytes: int, messages: int = 1) -> None:
        self.tx_bytes += nbytes
        self.tx_packets += messages
        self.tx_bytes_total += nbytes

    def take(self) -> Window:
        """Return this window's deltas and start a new window.

        A window's sessions are those active at any time during it.
        """
        window = Window(
            self._window_sessions,
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
        )
        self._reset()
        self._window_sessions = dict(self._active)
        return window

    def take_window(self) -> Stats:
        """``take()`` as the wire model."""
        return self.take().to_stats()


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
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._post = post
        self._collector = collector
        self._clock = clock
        self.interval: float | None = None
        # Retries only the first post (100 ms to 1 min); later windows wait for the next
        # interval anyway, so their failures only go through its log throttle.
        self._retry = Retry(0.1, 60.0, rng=rng)

    def _learn(self, response: StatsResponse) -> None:
        interval, warning = interval_from_response(response, self.interval)
        if warning:
            log.warning("stats.interval_ignored", reason=warning)
        if interval != self.interval:
            log.info("stats.interval_set", seconds=interval)
            self.interval = interval

    def _failed(self, exc: Exception) -> float:
        """Record a failed post; returns the backoff before the next try."""
        if not is_retryable(exc):
            raise exc
        failure = self._retry.failed(exc, self._clock.monotonic())
        if failure.repeats is not None:
            log.warning("stats.post_failed", error=str(exc), **traceback_fields(exc))
        return failure.delay

    async def _learn_interval(self) -> None:
        """The first post: an empty sample, retried until it lands."""
        while True:
            try:
                response = await self._post(Stats())
            except Exception as exc:
                await self._clock.sleep(self._failed(exc))
                continue
            self._retry.succeeded()
            self._learn(response)
            return

    async def run(self) -> None:
        await self._learn_interval()
        # What was taken but has not landed yet; merged into each next window.
        unsent = Window()
        while True:
            assert self.interval is not None
            await self._clock.sleep(self.interval)
            window = unsent.merge(self._collector.take())
            if window.is_empty:
                unsent = Window()  # sessions without bytes: the server would store nothing
                continue
            try:
                response = await self._post(window.to_stats())
            except Exception as exc:
                self._failed(exc)
                unsent = window
                continue
            self._retry.succeeded()
            unsent = Window()
            self._learn(response)
