"""Failed sign-in attempts, limited per user name and per client address. Pure: callers
pass ``now`` (monotonic seconds)."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final

MAX_KEYS: Final = 10_000


class FailureLimiter:
    """At most ``limit`` failures per key in any ``window`` seconds; past that, refuse the
    key until its oldest failure leaves the window. Tracks at most ``max_keys`` keys
    (least recently failed dropped first), so a flood of names cannot grow it."""

    def __init__(self, limit: int, window: float, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 if it may now."""
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def failed(self, key: str, now: float) -> None:
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(key)
        times.append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)
