"""Byte streams to a workspace (docs/protocol.md "Byte streams").

``GET /workspaceagents/{id}/stream?target=ssh|tcp:PORT`` (user) opens one bidirectional
byte stream to a target inside the workspace: the agent's SSH server, or a TCP port on the
workspace's loopback. It rides the dial-back plane of terminals (controlplane/dialback.py):
the server sends ``stream_request`` on the agent's coordinate socket, the agent connects
the target and dials back ``/workspaceagents/me/stream-dial?session=<id>``, or answers
``stream_error`` when the target cannot be connected. Every failure is therefore an HTTP
error with Coder's body *before* the user's socket is upgraded.

Other server code (an app proxy, say) opens streams with :func:`open_stream`, which returns
an :class:`AgentStream` (``read``/``write``/``write_eof``/``aclose``) or raises
:class:`StreamOpenError`, an :class:`HTTPError` that a handler may simply let through.

Wire form on both sockets: binary messages are the connection's bytes, an empty message is
end-of-file in that direction (a TCP half-close), and the close frame ends the stream.
Flow control is the terminal relay's: one loop per direction, each awaiting its send.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Final

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from agent.sdk.codec import Obj
from agent.sdk.dialback import STALL_TIMEOUT
from agent.sdk.errors import DecodeError
from agent.sdk.extensions import TYPE_STREAM_ERROR, StreamError, StreamRequest, Target
from controlplane import dialback
from controlplane.appkeys import COORDINATOR
from controlplane.auth import authenticate_user, owned_agent
from controlplane.httpapi import HTTPError
from controlplane.routes_shared import parse_agent_id, require_connected

log = structlog.get_logger()

STREAM_DIAL_ROUTE: Final = "/api/v2/workspaceagents/me/stream-dial"
STREAM_ROUTE: Final = "/api/v2/workspaceagents/{agent_id}/stream"
TARGET_HELP: Final = 'Query param \'target\' must be "ssh" or "tcp:<port>" with a port 1-65535.'


class StreamOpenError(HTTPError):
    """The stream could not be opened; ``status``/``message``/``detail`` say why."""


class TargetRefused(Exception):
    """The agent could not connect the target (its ``stream_error``)."""


def parse_target(raw: str | None) -> Target:
    try:
        return Target.parse(raw or "")
    except ValueError as exc:
        raise HTTPError(400, TARGET_HELP, str(exc), [("target", str(exc))]) from None


class AgentStream:
    """One open stream to a target in the workspace, seen from the server.

    ``read()`` returns the next chunk, or ``b""`` once the target sent end-of-file or the
    stream closed; ``write()`` waits while the agent is not reading (at most
    ``STALL_TIMEOUT``, then :class:`TimeoutError`). Always ``aclose()`` it (or use it as
    an async context manager): the agent's dial-back request lives until then.
    """

    def __init__(
        self, ws: web.WebSocketResponse, pending: dialback.PendingDial, target: Target
    ) -> None:
        self.ws = ws
        self.target = target
        self._pending = pending
        self._eof = False

    async def read(self) -> bytes:
        while not self._eof:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                if data:
                    return bytes(data)
            self._eof = True  # an empty message, or the close frame
        return b""

    async def write(self, data: bytes) -> None:
        if data:
            async with asyncio.timeout(STALL_TIMEOUT):
                await self.ws.send_bytes(data)

    async def write_eof(self) -> None:
        async with asyncio.timeout(STALL_TIMEOUT):
            await self.ws.send_bytes(b"")

    async def aclose(self, code: int = WSCloseCode.OK, reason: str = "") -> None:
        try:
            await dialback.close_socket(self.ws, code, reason)
        finally:
            self._pending.finished.set()

    async def __aenter__(self) -> AgentStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def open_stream(
    app: web.Application, agent_id: str, target: Target, *, client_addr: str = ""
) -> AgentStream:
    """Ask ``agent_id`` for a stream to ``target``. The caller has checked that the user
    may reach this agent. Raises :class:`StreamOpenError` (400 agent not connected, 502
    target closed or agent unreachable)."""

    def request_for(session_id: str) -> dict[str, Any]:
        return StreamRequest(session_id, target, client_addr).to_json()

    try:
        ws, pending = await dialback.dial_agent(app, agent_id, request_for)
    except dialback.DialError as exc:
        if not app[COORDINATOR].is_connected(agent_id):
            raise StreamOpenError(
                400, 'Agent state is "disconnected", it must be in the "connected" state.'
            ) from None
        raise StreamOpenError(502, "Failed to dial workspace agent.", str(exc)) from None
    except TargetRefused as exc:
        raise StreamOpenError(
            502, f"Failed to connect to {target} in the workspace.", str(exc)
        ) from None
    return AgentStream(ws, pending, target)


def _client_addr(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]} {peer[1]}"
    return ""


async def stream(request: web.Request) -> web.StreamResponse:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    target = parse_target(request.query.get("target"))
    await require_connected(request, agent)
    agent_stream = await open_stream(
        request.app, agent.id, target, client_addr=_client_addr(request)
    )
    relays = request.app[dialback.RELAYS]
    user_ws = web.WebSocketResponse(
        compress=False, heartbeat=dialback.HEARTBEAT, max_msg_size=dialback.MAX_MESSAGE_BYTES
    )
    relays.add(agent_stream.ws)
    try:
        await user_ws.prepare(request)
        relays.add(user_ws)
        with structlog.contextvars.bound_contextvars(agent_id=agent.id, target=str(target)):
            log.info("stream.relay_started", user=user.name)
            await dialback.pipe(user_ws, agent_stream.ws, "stream")
            log.info("stream.relay_ended", code=user_ws.close_code)
    finally:
        relays.discard(user_ws)
        relays.discard(agent_stream.ws)
        await agent_stream.aclose()
    return user_ws


async def stream_dial(request: web.Request) -> web.StreamResponse:
    return await dialback.accept_dial(request, "Stream")


def setup(app: web.Application) -> None:
    def on_error(agent_id: str, value: dict[str, Any]) -> None:
        with contextlib.suppress(DecodeError):
            reply = StreamError.from_obj(Obj(value, "stream error"))
            dialback.reject_dial(app, agent_id, reply.session_id, TargetRefused(reply.error))

    app[COORDINATOR].on_agent_message(TYPE_STREAM_ERROR, on_error)
    app.router.add_get(STREAM_DIAL_ROUTE, stream_dial)
    app.router.add_get(STREAM_ROUTE, stream)
