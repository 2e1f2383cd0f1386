"""Connection limits in front of aiohttp: time limits on request heads and idle keep-alive,
and a cap on connections that have not authenticated.

Without them one client can hold thousands of sockets that never finish a request (aiohttp
keeps an idle connection for about an hour and waits for a partial head without limit)
until the process runs out of file descriptors and ``/healthz`` stops answering.

The guard wraps aiohttp's protocol factory, so a connection over the cap is dealt with in
``connection_made``, before aiohttp builds any per-connection state. Over the cap the
*least recently active* unauthenticated connection is closed, not the new one: an attacker
holding the cap cannot lock out a health check or an agent that connects next, and a
connection that authenticated (an agent's or a user's token accepted) is never evicted.
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, cast

import structlog
from aiohttp import web

log = structlog.get_logger()

# The listening socket's accept queue. Python's default (128) fills in a few milliseconds
# when thousands of agents reconnect at once after a restart, or while the event loop is
# busy; a full queue drops SYNs and each client waits a second for its retransmit. The
# kernel caps it at net.core.somaxconn (4,096 on current kernels).
LISTEN_BACKLOG: Final = 2048
# asyncio also takes its ``backlog`` as the number of connections it accepts in one turn
# of the loop. The guard's evictions free their descriptors only on a later turn, so a
# turn that accepted 2,048 at once would run out of descriptors under a flood, and
# asyncio then stops accepting for a whole second. Turns stay at 128 accepts, and at a
# 16th of the descriptor limit (see accepts_per_turn).
ACCEPTS_PER_TURN: Final = 128

# File descriptors kept for everything that is not a client socket: the database and its
# WAL, log files, listening sockets, outgoing fetches (AIA, Google keys).
RESERVED_FDS: Final = 64


@dataclass(frozen=True)
class GuardLimits:
    head_timeout: float = 10.0  # from the first byte of a request to its complete head
    idle_timeout: float = 30.0  # keep-alive: from connect or the last response to a new request
    max_unauthenticated: int = 1024


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (systemd's soft default is 1,024,
    far below what a server needs) and return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("server.fd_limit_unchanged", soft=soft, hard=hard, error=str(exc))
    return soft


def accepts_per_turn(fd_limit: int) -> int:
    """Connections asyncio accepts in one turn of the loop. Under a flood the descriptors in
    use peak at the cap, plus one turn's accepts (admitted, and evicting, only on the turns
    after), plus the previous turn's evictions (closed a turn later still). With the cap at
    half of what the reserve leaves, a 16th of the limit per turn keeps that peak below the
    limit: 128 per turn at 2,048 descriptors or more; 16 at 256, where 128 ran a test
    server out of descriptors and stopped its accepts for a second."""
    return max(1, min(ACCEPTS_PER_TURN, fd_limit // 16))


def cap_for(limit: int, fd_limit: int) -> int:
    """The unauthenticated cap, at most half the descriptors left after the reserve, so
    authenticated clients always find descriptors too."""
    return max(1, min(limit, (fd_limit - RESERVED_FDS) // 2))


class _Conn(asyncio.Protocol):
    """One client connection: forwards to aiohttp's handler and keeps its deadline."""

    __slots__ = (
        "_guard",
        "_head_started",
        "_inner",
        "_timer",
        "authenticated",
        "closed",
        "in_request",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard) -> None:
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.authenticated = False
        self.closed = False
        self.in_request = False
        self._head_started = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not always an asyncio.Transport subclass (uvloop's).
        self.transport = cast(asyncio.Transport, transport)
        self._guard.admit(self)
        self._inner = self._guard.factory()
        self._inner.connection_made(transport)
        self._arm(self._guard.limits.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        self._guard.touch(self)
        if not self.in_request and not self._head_started:
            # The first byte of a new request: its head must be complete in head_timeout.
            self._head_started = True
            self._arm(self._guard.limits.head_timeout)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel()
        self._guard.forget(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # request phases, reported by the middleware
    def request_started(self) -> None:
        self.in_request = True
        self._cancel()
        self._guard.touch(self)

    def request_finished(self) -> None:
        self.in_request = False
        self._head_started = False
        self._guard.touch(self)
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self._arm(self._guard.limits.idle_timeout)

    def _arm(self, delay: float) -> None:
        self._cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is not None and not self.in_request:
            self._guard.expired += 1
            self.transport.abort()


class ConnectionGuard:
    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self.cap = limits.max_unauthenticated
        self.factory: Callable[[], asyncio.Protocol] = _no_factory
        # Unauthenticated connections by last activity, split by whether a handler is
        # working for them: those only waiting (idle, or sending a head) are closed first.
        self._waiting: OrderedDict[_Conn, None] = OrderedDict()
        self._busy: OrderedDict[_Conn, None] = OrderedDict()
        self._by_transport: dict[asyncio.BaseTransport, _Conn] = {}
        self.evicted = 0
        self.expired = 0

    @property
    def unauthenticated(self) -> int:
        return len(self._waiting) + len(self._busy)

    def protocol_factory(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], _Conn]:
        self.factory = factory
        return lambda: _Conn(self)

    def admit(self, conn: _Conn) -> None:
        while self.unauthenticated >= self.cap:
            oldest, _ = (self._waiting or self._busy).popitem(last=False)
            self.evicted += 1
            if oldest.transport is not None:
                oldest.transport.abort()
        assert conn.transport is not None
        self._waiting[conn] = None
        self._by_transport[conn.transport] = conn

    def touch(self, conn: _Conn) -> None:
        if conn.authenticated or conn.closed:
            return
        self._waiting.pop(conn, None)
        self._busy.pop(conn, None)
        (self._busy if conn.in_request else self._waiting)[conn] = None

    def forget(self, conn: _Conn) -> None:
        self._waiting.pop(conn, None)
        self._busy.pop(conn, None)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)

    def conn_of(self, request: web.Request) -> _Conn | None:
        transport = request.transport
        return None if transport is None else self._by_transport.get(transport)

    def mark_authenticated(self, request: web.Request) -> None:
        conn = self.conn_of(request)
        if conn is not None and not conn.authenticated:
            conn.authenticated = True
            self._waiting.pop(conn, None)
            self._busy.pop(conn, None)


def _no_factory() -> asyncio.Protocol:
    raise RuntimeError("ConnectionGuard.protocol_factory was never called")


GUARD: Final = web.AppKey("connection_guard", ConnectionGuard)


@web.middleware
async def guard_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell the guard when a request's head is complete and when its handler is done: the
    head and idle timers run only between requests, never while a handler works."""
    guard = request.app.get(GUARD)
    conn = guard.conn_of(request) if guard is not None else None
    if conn is None:
        return await handler(request)
    conn.request_started()
    try:
        return await handler(request)
    finally:
        conn.request_finished()


def mark_authenticated(request: web.Request) -> None:
    """A token was accepted on this connection: it no longer counts against the cap."""
    guard = request.app.get(GUARD)
    if guard is not None:
        guard.mark_authenticated(request)


class GuardedSockSite(web.SockSite):
    """``SockSite`` whose listening socket hands connections to the guard first."""

    __slots__ = ("_accepts", "_guard")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: object,
        guard: ConnectionGuard,
        *,
        ssl_context: object = None,
        backlog: int = LISTEN_BACKLOG,
        accepts: int = ACCEPTS_PER_TURN,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)  # type: ignore[arg-type]
        self._guard = guard
        self._accepts = accepts

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.protocol_factory(server),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._accepts,
        )
        # Then the kernel's queue alone is made longer (listen() again only resizes it).
        self._sock.listen(self._backlog)
