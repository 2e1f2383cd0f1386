"""Serve StreamRequests: connect the target, dial back, and pump bytes both ways.

The server asked over the coordinate socket (docs/protocol.md "Byte streams"). The target
is connected *first*: if it cannot be, the agent answers ``stream_error`` on the coordinate
socket and never dials, so the user gets an HTTP error instead of a socket that closes at
once. Otherwise one new WebSocket to ``STREAM_DIAL_PATH?session=<id>`` carries the
connection: binary messages are its bytes, an empty message is end-of-file in that
direction (TCP half-close), and the close frame ends it.

Backpressure follows the PTY plane: each direction is one loop that reads and then awaits
its write. A slow target stops the loop that reads the WebSocket (whose receive queue is
small and then stops reading the socket); a slow user stops ``ws.send``, which stops the
loop that reads the target. A single send blocked for ``stall_timeout`` closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from agent.errors import StreamTargetError, WsagentError
from agent.sdk.dialback import STALL_TIMEOUT
from agent.sdk.extensions import StreamError, StreamRequest

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

log = structlog.get_logger()

CHUNK: Final = 256 * 1024
MAX_STREAMS: Final = 1024
CLOSE_NORMAL: Final = 1000
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[StreamRequest], Awaitable[Connection]]
Dialer = Callable[[str, str], Awaitable["ClientConnection"]]
Reply = Callable[[dict[str, Any]], Awaitable[None]]


class TrafficSink(Protocol):
    """What streams report to (agent.stats.StatsCollector satisfies it)."""

    def session_opened(self, session_id: str, proto: str) -> None: ...
    def session_closed(self, session_id: str) -> None: ...
    def record_rx(self, nbytes: int, messages: int = 1) -> None: ...
    def record_tx(self, nbytes: int, messages: int = 1) -> None: ...


class StreamHandler:
    """Runs every open stream as its own task, at most ``max_streams`` at once.

    ``connectors`` maps a target kind ("ssh", "tcp") to what connects it; a kind without
    one is answered with an error, so an agent can leave SSH out.
    """

    def __init__(
        self,
        dial: Dialer,
        connectors: Mapping[str, Connector],
        stats: TrafficSink,
        *,
        max_streams: int = MAX_STREAMS,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self._dial = dial
        self._connectors = dict(connectors)
        self._stats = stats
        self._max_streams = max_streams
        self._stall_timeout = stall_timeout
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def handle(self, request: StreamRequest, reply: Reply) -> None:
        """Start serving ``request`` and return at once: a stream lives as long as its
        connection, not as long as the coordinate socket's request handler."""
        connector = self._connectors.get(request.target.kind)
        if connector is None:
            await reply(StreamError(request.session_id, f"{request.target} is off").to_json())
            return
        if len(self._tasks) >= self._max_streams:
            why = f"stream limit reached: this agent serves at most {self._max_streams} streams"
            await reply(StreamError(request.session_id, why).to_json())
            return
        task = asyncio.create_task(self._serve(request, connector, reply), name="stream")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: StreamRequest, connector: Connector, reply: Reply) -> None:
        target = str(request.target)
        try:
            reader, writer = await connector(request)
        except StreamTargetError as exc:
            log.info("stream.target_failed", target=target, error=str(exc))
            with contextlib.suppress(WsagentError, OSError, RuntimeError):
                await reply(StreamError(request.session_id, str(exc)).to_json())
            return
        try:
            ws = await self._dial(request.session_id, request.url)
        except WsagentError as exc:
            log.warning("stream.dial_failed", target=target, error=str(exc))
            writer.close()
            return
        conn_id = f"stream#{next(self._ids)}"
        self._stats.session_opened(conn_id, request.target.proto)
        log.debug("stream.opened", conn=conn_id, target=target)
        code, reason = CLOSE_INTERNAL, "stream ended"
        try:
            code, reason = await pump(ws, reader, writer, self._stats, self._stall_timeout)
        finally:
            self._stats.session_closed(conn_id)
            writer.close()
            with contextlib.suppress(Exception):
                await ws.close(code, reason[:123])
        log.debug("stream.closed", conn=conn_id, code=code, reason=reason)

    def cancel_all(self) -> None:
        """Shutdown: end every stream (each closes its socket and its target)."""
        for task in list(self._tasks):
            task.cancel()


class _SocketClosed(Exception):
    """The user's side closed the WebSocket without sending end-of-file first."""


async def pump(
    ws: ClientConnection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stats: TrafficSink,
    stall_timeout: float = STALL_TIMEOUT,
) -> tuple[int, str]:
    """Copy bytes both ways until both directions reached end-of-file or either failed.

    Returns the close code and reason to send (the socket may already be closed)."""
    from websockets.exceptions import ConnectionClosed

    async def to_target() -> None:
        async for message in ws:
            data = message if isinstance(message, bytes) else message.encode()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            stats.record_rx(len(data))
            writer.write(data)
            await writer.drain()
        raise _SocketClosed

    async def to_user() -> None:
        while data := await reader.read(CHUNK):
            stats.record_tx(len(data))
            async with asyncio.timeout(stall_timeout):  # no task per message, unlike wait_for
                await ws.send(data)
        async with asyncio.timeout(stall_timeout):
            await ws.send(b"")

    tasks = {asyncio.create_task(to_target()), asyncio.create_task(to_user())}
    try:
        while tasks:
            done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    continue  # that direction reached end-of-file; the other goes on
                if isinstance(exc, ConnectionClosed | _SocketClosed):
                    return CLOSE_NORMAL, ""
                if isinstance(exc, TimeoutError):
                    log.warning("stream.reader_stalled", seconds=stall_timeout)
                    return CLOSE_POLICY, f"stream stalled: not read for {stall_timeout:g}s"
                if isinstance(exc, OSError):
                    return CLOSE_INTERNAL, f"workspace connection failed: {exc}"
                raise exc
        return CLOSE_NORMAL, ""
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
