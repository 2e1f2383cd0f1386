"""The agent end of ``GET /me/coordinate``: send our Node, receive peers and extensions.

The socket is a byte stream of JSON values (docs/protocol.md, "The coordinate socket").
Arrays are tailnet peer updates; objects with a ``type`` are this project's extension
requests (docs/protocol.md, "Extension objects on the coordinate socket"). Unknown extension
types are logged once and ignored.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import structlog

from agent.errors import (
    ApiError,
    DecodeError,
    ProtocolError,
    TransportError,
    TransportTimeout,
    UnauthorizedError,
    transport_kind,
)
from agent.sdk import codec
from agent.sdk.extensions import COORDINATE_ENDPOINT, Extension, decode_extension
from agent.sdk.jsonstream import JSONStream
from agent.sdk.models import ErrorResponse
from agent.sdk.tailnet import Node, decode_nodes

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

# websockets is imported on first dial, not at start-up: the agent's first request (the
# metadata GET) should not wait for a library it needs only a moment later.

log = structlog.get_logger()

PING_INTERVAL: Final = 30.0
PING_TIMEOUT: Final = 30.0
OPEN_TIMEOUT: Final = 10.0
MAX_MESSAGE_BYTES: Final = 1 << 20
CLOSE_GOING_AWAY: Final = 1001
# Distinct unknown message types (and bad-message paths) remembered so each is logged
# once; capped, since the server chooses them. Past the cap they are ignored silently.
MAX_REMEMBERED_UNKNOWN: Final = 64
# Peers kept per session, and extension requests handled at once: the server decides how
# many it sends, so both are capped.
MAX_PEERS: Final = 4096
MAX_CONCURRENT_EXTENSIONS: Final = 256
# How long a polite close waits for the server's close frame before dropping the TCP
# connection; bounded so that shutdown stays within its 5 s budget.
CLOSE_TIMEOUT: Final = 1.0

ExtensionHandler = Callable[[Extension, "CoordinatorSession"], Awaitable[None]]


def websocket_ssl(url: str, verify: ssl.SSLContext | bool) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    if isinstance(verify, ssl.SSLContext):
        return verify
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def handshake_error(url: str, exc: Exception) -> Exception:
    """Map a failed WebSocket dial to the same typed errors the REST client raises."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    if isinstance(exc, InvalidStatus):
        response = exc.response
        status = response.status_code
        cls = UnauthorizedError if status == 401 else ApiError
        body = bytes(response.body or b"")
        try:
            err = ErrorResponse.from_json(codec.loads("GET " + url, body), "GET " + url)
            return cls("GET", url, status, err.message or f"status {status}", err.detail)
        except DecodeError:
            return cls("GET", url, status, f"websocket upgrade refused with status {status}")
    if isinstance(exc, TimeoutError):
        return TransportTimeout("GET", url, "websocket dial timed out")
    kind = transport_kind(exc)
    if kind is TransportError and isinstance(exc, InvalidHandshake):
        kind = ProtocolError  # an upgrade answered with something that is not WebSocket
    return kind("GET", url, f"{type(exc).__name__}: {exc}")


async def dial(
    url: str,
    headers: dict[str, str],
    verify: ssl.SSLContext | bool,
    *,
    ping_interval: float | None = PING_INTERVAL,
    max_size: int | None = MAX_MESSAGE_BYTES,
    write_limit: int = 64 * 1024,
    max_queue: int = 16,
) -> ClientConnection:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake

    try:
        return await connect(
            url,
            additional_headers=headers,
            ssl=websocket_ssl(url, verify),
            compression=None,
            open_timeout=OPEN_TIMEOUT,
            ping_interval=ping_interval,
            ping_timeout=PING_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            max_size=max_size,
            write_limit=write_limit,
            max_queue=max_queue,
            user_agent_header="wsagent",
        )
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        raise handshake_error(url, exc) from exc


class CoordinatorSession:
    """One open coordinate socket."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._send_lock = asyncio.Lock()
        self.peers: dict[int, Node] = {}

    async def send_json(self, value: dict[str, Any]) -> None:
        data = json.dumps(value, separators=(",", ":")).encode()
        async with self._send_lock:
            await self._ws.send(data)

    async def close(self, reason: str = "agent shutting down") -> None:
        await self._ws.close(CLOSE_GOING_AWAY, reason)


class Coordinator:
    """Runs coordinate sessions; one per connection attempt of the run loop."""

    def __init__(self, on_extension: ExtensionHandler) -> None:
        self._on_extension = on_extension
        self._unknown_types_logged: set[str] = set()
        self._bad_messages_logged: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.current: CoordinatorSession | None = None

    async def serve(
        self,
        url: str,
        headers: dict[str, str],
        verify: ssl.SSLContext | bool,
        node: Node,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        """Dial, send ``node``, and process messages until the socket fails.

        Always raises when it returns: the caller's run loop then reconnects. Cancelled
        (shutdown), it closes the socket with 1001 "going away" before re-raising.
        """
        from websockets.exceptions import ConnectionClosed

        ws = await dial(url, headers, verify)
        session = CoordinatorSession(ws)
        self.current = session
        log.debug("coordinator.connected", url=url)
        if on_connected is not None:
            on_connected()
        stream = JSONStream(COORDINATE_ENDPOINT, MAX_MESSAGE_BYTES)
        try:
            await session.send_json(node.to_json())
            async for message in ws:
                data = message.encode() if isinstance(message, str) else message
                for value in stream.feed(data):
                    self._dispatch(value, session)
        except ConnectionClosed as exc:
            raise ProtocolError("GET", url, f"coordinate socket closed: {exc}") from exc
        except asyncio.CancelledError:
            await session.close()
            raise
        finally:
            self.current = None
            await ws.close()
        raise ProtocolError("GET", url, "coordinate socket closed by the server")

    def _dispatch(self, value: object, session: CoordinatorSession) -> None:
        # One bad message is dropped, not allowed to kill the socket: the server would
        # send the same thing again after every reconnect.
        try:
            self._dispatch_value(value, session)
        except DecodeError as exc:
            known = self._bad_messages_logged
            if exc.path not in known and len(known) < MAX_REMEMBERED_UNKNOWN:
                known.add(exc.path)
                log.warning("coordinator.bad_message", error=str(exc)[:200])

    def _dispatch_value(self, value: object, session: CoordinatorSession) -> None:
        if isinstance(value, list):
            for peer in decode_nodes(value, COORDINATE_ENDPOINT):
                session.peers.pop(peer.id, None)
                session.peers[peer.id] = peer
                if len(session.peers) > MAX_PEERS:
                    del session.peers[next(iter(session.peers))]  # the least recently updated
            log.debug("coordinator.peers_updated", peers=len(session.peers))
            return
        extension = decode_extension(value)
        if isinstance(extension, str):
            known = self._unknown_types_logged
            if extension not in known and len(known) < MAX_REMEMBERED_UNKNOWN:
                known.add(extension)
                log.warning("coordinator.unknown_message_type", type=extension[:64])
            return
        if len(self._tasks) >= MAX_CONCURRENT_EXTENSIONS:
            log.warning("coordinator.extension_dropped", type=type(extension).__name__)
            return
        task = asyncio.create_task(self._handle(extension, session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, extension: Extension, session: CoordinatorSession) -> None:
        try:
            await self._on_extension(extension, session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed request must not take down the socket
            log.warning(
                "coordinator.extension_failed", type=type(extension).__name__, error=str(exc)
            )

    async def aclose(self) -> None:
        session = self.current
        if session is not None:
            await session.close()
        for task in list(self._tasks):
            task.cancel()
