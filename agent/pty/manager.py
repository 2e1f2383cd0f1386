"""The agent's terminal sessions, keyed by the client's ``reconnect`` UUID, with a cap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import structlog

from agent.clock import Clock
from agent.errors import PtyError
from agent.pty.command import LaunchSpec
from agent.pty.process import PtyChild, spawn
from agent.pty.session import DEFAULT_LIMITS, Attachment, FlowLimits, PtySession, TrafficSink
from agent.sdk.pty import ReconnectingPTYInit

log = structlog.get_logger()

MAX_SESSIONS_SETTING: Final = "CODER_AGENT_PTY_MAX_SESSIONS"

Spawner = Callable[[Sequence[str], Mapping[str, str], "str | None", int, int], PtyChild]


class SessionLimitError(PtyError):
    """A new session would exceed the agent's cap; the user sees this text."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"terminal session limit reached: this agent runs at most {limit} sessions "
            f"({MAX_SESSIONS_SETTING}); close a terminal and retry"
        )


class SessionManager:
    def __init__(
        self,
        *,
        launch: Callable[[str], LaunchSpec],
        stats: TrafficSink,
        clock: Clock,
        max_sessions: int = 64,
        idle_timeout: float = 300.0,
        scrollback_bytes: int = 256 * 1024,
        limits: FlowLimits = DEFAULT_LIMITS,
        register_group: Callable[[int, str], None] = lambda pgid, what: None,
        unregister_group: Callable[[int], None] = lambda pgid: None,
        spawner: Spawner = spawn,
    ) -> None:
        self._launch = launch
        self._stats = stats
        self._clock = clock
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.scrollback_bytes = scrollback_bytes
        self.limits = limits
        self._register_group = register_group
        self._unregister_group = unregister_group
        self._spawner = spawner
        self.sessions: dict[str, PtySession] = {}

    def attach(self, init: ReconnectingPTYInit, conn: Attachment) -> PtySession:
        """Attach ``conn`` to session ``init.id``, starting the session if it is new.

        Raises :class:`SessionLimitError` at the cap and :class:`PtyError` when the
        command cannot start.
        """
        session = self.sessions.get(init.id)
        if session is None:
            session = self._start(init)
        session.attach(conn, init.height, init.width)
        return session

    def _start(self, init: ReconnectingPTYInit) -> PtySession:
        if len(self.sessions) >= self.max_sessions:
            log.warning("pty.session_limit", limit=self.max_sessions, pty_id=init.id)
            raise SessionLimitError(self.max_sessions)
        spec = self._launch(init.command)
        child = self._spawner(spec.argv, spec.env, spec.cwd, init.height, init.width)
        self._register_group(child.pgid, f"terminal {init.id}")
        session = PtySession(
            init.id,
            child,
            scrollback_bytes=self.scrollback_bytes,
            idle_timeout=self.idle_timeout,
            stats=self._stats,
            on_end=self._ended,
            clock=self._clock,
            limits=self.limits,
            banner=spec.banner,
        )
        self.sessions[init.id] = session
        log.info(
            "pty.session_started",
            pty_id=init.id,
            pid=child.pid,
            command=init.command or "(login shell)",
            sessions=len(self.sessions),
        )
        return session

    def _ended(self, session: PtySession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        self._unregister_group(session.child.pgid)

    async def aclose(self) -> None:
        """End every session (agent shutdown)."""
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
