"""Which repeats of a failing operation are worth a log line (:class:`FailureThrottle`).

The logging set-up itself (redaction, rotating file, configure) is in :mod:`wscommon.logs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from wscommon.logs import REDACTOR


@dataclass
class _KeyState:
    count: int
    quiet: float
    next_log_at: float


@dataclass
class FailureThrottle:
    """Decides which repeats of a failing operation are worth a log line.

    A failure whose ``key`` has not been seen since the last success is logged at once, so
    every new kind of failure shows up. A known key is logged again only after
    ``first_quiet`` seconds, then at doubling intervals up to ``max_quiet``. Keys are
    remembered separately (up to ``max_keys``), so two errors that alternate do not log
    a line per retry either. Pure: the caller passes ``now``.
    """

    first_quiet: float = 60.0
    max_quiet: float = 3600.0
    max_keys: int = 32
    _keys: dict[str, _KeyState] = field(default_factory=dict)
    _total: int = 0

    def failure(self, key: str, now: float) -> int | None:
        """Record a failure; return its repeat count if it should be logged, else None."""
        self._total += 1
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self.max_keys:
                del self._keys[next(iter(self._keys))]  # forget the oldest kind
            self._keys[key] = _KeyState(1, self.first_quiet, now + self.first_quiet)
            return 1
        state.count += 1
        if now >= state.next_log_at:
            state.quiet = min(state.quiet * 2, self.max_quiet)
            state.next_log_at = now + state.quiet
            return state.count
        return None

    def success(self) -> int:
        """Record a success; return how many failures preceded it (0 if none)."""
        total = self._total
        self._keys.clear()
        self._total = 0
        return total

    @property
    def failing(self) -> bool:
        return bool(self._keys)


def error_key(exc: BaseException) -> str:
    """A stable description of an error for :class:`FailureThrottle` (type and message)."""
    return f"{type(exc).__name__}: {exc}"


def redact_all(values: Iterable[str]) -> None:
    for value in values:
        REDACTOR.add(value)
