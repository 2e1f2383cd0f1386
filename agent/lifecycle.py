"""The agent's lifecycle state machine and the outbox of states still to report. Pure.

States (docs/protocol.md, "Startup and lifecycle")::

    created --start--> starting --exited_ok----> ready
                          |    --exited_error-> start_error
                          +--timeout--> start_timeout --exited_ok----> ready
                                                      --exited_error-> start_error

    any of the above --shutdown--> shutting_down --shutdown_ok------> off
                                                 --shutdown_error---> shutdown_error
                                                 --shutdown_timeout-> shutdown_timeout

Coder keeps one "current state" slot and may skip intermediate states; here every state is
queued and posted in order, so the control plane sees ``starting`` before ``ready`` even
for a script that exits at once. After a reconnect the current state is queued again: the
server may have lost it (a restart from an older database, a 204 lost in flight).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from agent.sdk.errors import WsagentError

CREATED: Final = "created"
STARTING: Final = "starting"
START_TIMEOUT: Final = "start_timeout"
START_ERROR: Final = "start_error"
READY: Final = "ready"
SHUTTING_DOWN: Final = "shutting_down"
SHUTDOWN_TIMEOUT: Final = "shutdown_timeout"
SHUTDOWN_ERROR: Final = "shutdown_error"
OFF: Final = "off"

START: Final = "start"
TIMEOUT: Final = "timeout"
EXITED_OK: Final = "exited_ok"
EXITED_ERROR: Final = "exited_error"
SHUTDOWN: Final = "shutdown"
SHUTDOWN_OK: Final = "shutdown_ok"
SHUTDOWN_FAILED: Final = "shutdown_failed"
SHUTDOWN_TIMED_OUT: Final = "shutdown_timed_out"

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (CREATED, START): STARTING,
    (STARTING, TIMEOUT): START_TIMEOUT,
    (STARTING, EXITED_OK): READY,
    (STARTING, EXITED_ERROR): START_ERROR,
    (START_TIMEOUT, EXITED_OK): READY,
    (START_TIMEOUT, EXITED_ERROR): START_ERROR,
    **{
        (state, SHUTDOWN): SHUTTING_DOWN
        for state in (CREATED, STARTING, START_TIMEOUT, START_ERROR, READY)
    },
    (SHUTTING_DOWN, SHUTDOWN_OK): OFF,
    (SHUTTING_DOWN, SHUTDOWN_FAILED): SHUTDOWN_ERROR,
    (SHUTTING_DOWN, SHUTDOWN_TIMED_OUT): SHUTDOWN_TIMEOUT,
}

# The table allows at most five transitions, plus one re-send after a reconnect; the cap
# only guards against a caller looping on reconnected().
MAX_OUTBOX: Final = 8


class LifecycleError(WsagentError):
    """An event that is not allowed in the current state."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"lifecycle event {event!r} is not allowed in state {state!r}")


class Lifecycle:
    def __init__(self) -> None:
        self.state: str = CREATED
        self.confirmed: str = CREATED
        self._outbox: deque[str] = deque()

    def apply(self, event: str) -> str:
        """Move to the next state and queue it for reporting; illegal events raise and
        leave the state unchanged."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LifecycleError(self.state, event)
        self.state = new
        self._queue(new)
        return new

    def _queue(self, state: str) -> None:
        if self._outbox and self._outbox[-1] == state:
            return
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.popleft()
        self._outbox.append(state)

    def pending(self) -> str | None:
        """The next state to post, oldest first; None when the server is up to date."""
        return self._outbox[0] if self._outbox else None

    def posted(self, state: str) -> None:
        """``state`` was accepted by the server."""
        if self._outbox and self._outbox[0] == state:
            self._outbox.popleft()
        self.confirmed = state

    def reconnected(self) -> None:
        """A new connection: make sure the server ends up with the current state."""
        if self.state != CREATED and not self._outbox:
            self._outbox.append(self.state)

    @property
    def outbox(self) -> tuple[str, ...]:
        return tuple(self._outbox)
