"""The agent's one retry policy: what is worth retrying, how long to wait, what to log.

Every loop that talks to the control plane (the connection loop, the lifecycle, stats and
app-health reporters) retries the same way: :func:`is_retryable` decides whether another
try can help, a :class:`Retry` draws the jittered delay before it and decides, through a
:class:`FailureThrottle`, which repeats of a failure are worth a log line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

from agent.backoff import Backoff
from agent.errors import ConfigError, WsagentError

# Errors that another try cannot fix: only the operator can (a missing cloud, a bad URL).
PERMANENT: Final = (ConfigError,)


def is_retryable(error: BaseException) -> bool:
    """Whether the same call may succeed if it is tried again later.

    Retryable: every transport failure (a timeout, a refused connection, a TLS or protocol
    failure: the server may be restarting, a proxy or certificate may be fixed, all without
    the agent restarting), every answer of the control plane (a 5xx passes; a 401 or 403
    may pass after the next token exchange or a fix on the server), a body that did not
    decode (a server being upgraded), and an unexpected exception (the agent stays up; the
    caller logs it with its traceback).

    Not retryable: a :class:`ConfigError`, and anything that is not an ``Exception``
    (cancellation, ``KeyboardInterrupt``).
    """
    return isinstance(error, Exception) and not isinstance(error, PERMANENT)


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


def traceback_fields(exc: BaseException) -> dict[str, object]:
    """Log fields for a failure: an expected one (the server away) is one line; anything
    else, a bug most likely, keeps its traceback."""
    return {} if isinstance(exc, WsagentError) else {"exc_info": exc}


@dataclass(frozen=True, slots=True)
class Failure:
    """What to do after one failed try."""

    delay: float  # seconds to wait before the next try
    repeats: int | None  # how many times it failed, when this one is worth a log line


class Retry:
    """The retry state of one operation: a jittered exponential backoff between tries
    (see :class:`agent.backoff.Backoff`) and a throttle on its failure log.

    Pure: the caller passes ``now`` and does the waiting, on its own clock.
    """

    def __init__(
        self,
        floor: float,
        ceiling: float,
        *,
        rng: random.Random | None = None,
        throttle: FailureThrottle | None = None,
    ) -> None:
        self.backoff = Backoff(floor, ceiling, rng=rng or random.Random())
        self.throttle = throttle or FailureThrottle()

    def failed(self, error: BaseException, now: float) -> Failure:
        """Record a failed try of a retryable ``error``: the delay before the next one and
        whether this failure is worth a log line."""
        repeats = self.throttle.failure(error_key(error), now)
        return Failure(self.backoff.next_delay(), repeats)

    def succeeded(self) -> int:
        """A try landed: the next failure starts from the floor again and is news in the
        log. Returns how many failures preceded it."""
        self.backoff.reset()
        return self.throttle.success()

    def reset_backoff(self) -> None:
        """Try again soon (a reconnect): the delay starts from the floor, while repeats of
        a known failure stay quiet in the log."""
        self.backoff.reset()

    @property
    def failing(self) -> bool:
        return self.throttle.failing
