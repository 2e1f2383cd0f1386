"""The terminal data plane on the server (docs/protocol.md "Terminals").

``GET /workspaceagents/{id}/pty`` (user) asks the agent, over its coordinate socket, to dial
back ``GET /workspaceagents/me/pty-dial?session=<id>`` (agent). The session ID is random,
single-use and expires after ``pty_dial_timeout``; only the agent it was issued to may use
it. Once the agent is on the line the server sends the reconnecting-PTY init frame and then
is a plain pipe: user messages to the agent, agent messages to the user.

Flow control: each direction is one loop that reads a message and awaits its send. aiohttp
stops reading a socket whose unread messages pass a small limit, and a send waits while the
other socket's transport is above its high-water mark, so a slow reader on either end stops
the loop that feeds it and nothing buffers without bound. A send blocked longer than
``STALL_TIMEOUT`` means the reader is gone or hopeless: the relay closes both sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from agent.sdk.extensions import PTYRequest
from agent.sdk.pty import ReconnectingPTYInit
from controlplane.appkeys import CONFIG, COORDINATOR
from controlplane.auth import authenticate_agent, authenticate_user, owned_agent
from controlplane.coordinator import AgentNotConnected
from controlplane.httpapi import HTTPError
from controlplane.routes_shared import parse_agent_id, require_connected

log = structlog.get_logger()

DEFAULT_DIMENSION: Final = 80
MAX_CLOSE_REASON: Final = 123
MAX_MESSAGE_BYTES: Final = 1 << 20
STALL_TIMEOUT: Final = 30.0
HEARTBEAT: Final = 15.0
_UINT: Final = re.compile(r"[0-9]+")
# Close codes a peer may send (RFC 6455 and the IANA registry: 1012-1014 too); anything
# else (1005, 1006, 1015...) becomes 1011.
_SENDABLE: Final = (
    frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))
)


@dataclass(eq=False)
class PendingDial:
    agent_id: str
    expires_at: float
    arrived: asyncio.Future[web.WebSocketResponse]
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    used: bool = False


PENDING: web.AppKey[dict[str, PendingDial]] = web.AppKey("pty_pending")
RELAYS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("pty_relays")


def parse_dimension(raw: str | None) -> int:
    """Go's ``strconv.ParseUint(s, 10, 16)``, with Coder's fallback of 80 on any error."""
    if raw is None or not _UINT.fullmatch(raw):
        return DEFAULT_DIMENSION
    value = int(raw)
    return value if value <= 0xFFFF else DEFAULT_DIMENSION


def parse_reconnect(raw: str | None) -> str:
    try:
        return str(uuid.UUID(raw or ""))
    except ValueError:
        raise HTTPError(
            400,
            "Query param 'reconnect' must be a valid UUID.",
            validations=[("reconnect", "invalid UUID")],
        ) from None


def truncate_reason(reason: str, limit: int = MAX_CLOSE_REASON) -> bytes:
    """A close reason fits in 123 bytes of UTF-8; cut on a character boundary."""
    data = reason.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def sendable_code(code: int | None) -> int:
    return code if code is not None and code in _SENDABLE else WSCloseCode.INTERNAL_ERROR


# ---------------------------------------------------------------------------- user side


async def pty(request: web.Request) -> web.StreamResponse:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    await require_connected(request, agent)
    query = request.query
    init = ReconnectingPTYInit(
        id=parse_reconnect(query.get("reconnect")),
        height=parse_dimension(query.get("height")),
        width=parse_dimension(query.get("width")),
        command=query.get("command", ""),
    )
    user_ws = web.WebSocketResponse(
        compress=False, heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE_BYTES
    )
    await user_ws.prepare(request)
    relays = request.app[RELAYS]
    relays.add(user_ws)
    try:
        agent_ws, pending = await dial_agent(
            request.app, agent.id, lambda session_id: PTYRequest(session_id).to_json()
        )
    except DialError as exc:
        relays.discard(user_ws)
        await user_ws.close(
            code=WSCloseCode.INTERNAL_ERROR, message=truncate_reason(f"dial workspace agent: {exc}")
        )
        return user_ws
    relays.add(agent_ws)
    with structlog.contextvars.bound_contextvars(agent_id=agent.id, pty_id=init.id):
        log.info("pty.relay_started", user=user.name)
        try:
            try:
                await agent_ws.send_bytes(init.encode_frame())
            except (ConnectionError, RuntimeError) as exc:
                await close_socket(
                    user_ws, WSCloseCode.INTERNAL_ERROR, f"dial workspace agent: {exc}"
                )
            else:
                await pipe(user_ws, agent_ws)
        finally:
            relays.discard(user_ws)
            relays.discard(agent_ws)
            pending.finished.set()
        log.info("pty.relay_ended", code=user_ws.close_code)
    return user_ws


class DialError(Exception):
    pass


async def dial_agent(
    app: web.Application, agent_id: str, request_for: Callable[[str], dict[str, Any]]
) -> tuple[web.WebSocketResponse, PendingDial]:
    """Send ``request_for(session_id)`` to the agent and wait (bounded) for its dial-back.

    Shared by terminals and byte streams: one table of pending sessions, one dial-back
    check. :func:`reject_dial` fails a pending dial with the agent's reason instead.
    """
    timeout = app[CONFIG].pty_dial_timeout
    session_id = secrets.token_urlsafe(24)
    loop = asyncio.get_running_loop()
    pending = PendingDial(agent_id, time.monotonic() + timeout, loop.create_future())
    table = app[PENDING]
    _expire(table)
    table[session_id] = pending
    try:
        await app[COORDINATOR].send_to_agent(agent_id, request_for(session_id))
        return await asyncio.wait_for(asyncio.shield(pending.arrived), timeout), pending
    except AgentNotConnected as exc:
        raise DialError(str(exc)) from None
    except TimeoutError:
        raise DialError(f"the agent did not dial back within {timeout:g}s") from None
    finally:
        table.pop(session_id, None)
        if not pending.arrived.done():
            pending.arrived.cancel()


def reject_dial(app: web.Application, agent_id: str, session_id: str, exc: Exception) -> None:
    """The agent answered a dial request with an error instead of dialling back."""
    pending = app[PENDING].get(session_id)
    if pending is not None and pending.agent_id == agent_id and not pending.arrived.done():
        pending.arrived.set_exception(exc)


def _expire(table: dict[str, PendingDial]) -> None:
    now = time.monotonic()
    for key in [k for k, p in table.items() if p.expires_at < now]:
        del table[key]


async def pipe(
    user_ws: web.WebSocketResponse, agent_ws: web.WebSocketResponse, what: str = "terminal"
) -> None:
    """Copy messages both ways until one side closes; close the other with its reason.

    Messages are forwarded unchanged, empty ones included (a stream's end-of-file)."""
    to_agent = asyncio.create_task(_copy(user_ws, agent_ws, "client", what))
    to_user = asyncio.create_task(_copy(agent_ws, user_ws, "agent", what))
    done, _ = await asyncio.wait({to_agent, to_user}, return_when=asyncio.FIRST_COMPLETED)
    first = to_user if to_user in done else to_agent
    other = to_agent if first is to_user else to_user
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    try:
        code, reason = first.result()
    except Exception as exc:  # a relay bug must still close both sockets
        log.exception("pty.relay_failed")
        code, reason = WSCloseCode.INTERNAL_ERROR, f"relay failed: {type(exc).__name__}"
    target = user_ws if first is to_user else agent_ws
    source = agent_ws if first is to_user else user_ws
    await close_socket(target, sendable_code(code), reason)
    await close_socket(source, WSCloseCode.OK, "")


async def _copy(
    source: web.WebSocketResponse, target: web.WebSocketResponse, who: str, what: str
) -> tuple[int | None, str]:
    """Forward messages; returns the close (code, reason) that ended ``source``."""
    while True:
        msg = await source.receive()
        if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            try:
                await asyncio.wait_for(target.send_bytes(data), STALL_TIMEOUT)
            except TimeoutError:
                log.warning("pty.relay_stalled", reader="agent" if who == "client" else "client")
                reason = f"{what} stalled: output not read for {STALL_TIMEOUT:g}s"
                return WSCloseCode.POLICY_VIOLATION, reason
            except (ConnectionError, RuntimeError):
                return WSCloseCode.GOING_AWAY, f"{who} connection lost"
            continue
        if msg.type == WSMsgType.CLOSE:
            return int(msg.data), str(msg.extra or "")
        if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
            return source.close_code, ""
        if msg.type == WSMsgType.ERROR:
            return WSCloseCode.INTERNAL_ERROR, f"{who} connection failed"


async def close_socket(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    if ws.closed:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code=code, message=truncate_reason(reason)), 5.0)


# ---------------------------------------------------------------------------- agent side


async def pty_dial(request: web.Request) -> web.StreamResponse:
    return await accept_dial(request, "PTY")


async def accept_dial(request: web.Request, noun: str) -> web.StreamResponse:
    """The agent's dial-back for a pending session; ``noun`` names it in errors."""
    agent = await authenticate_agent(request)
    session_id = request.query.get("session", "")
    table = request.app[PENDING]
    pending = table.get(session_id)
    if not session_id or pending is None:
        raise HTTPError(
            404,
            f"{noun} session not found.",
            "The session ID is unknown, expired or already used.",
        )
    if pending.agent_id != agent.id:
        raise HTTPError(403, f"{noun} session belongs to another agent.")
    if pending.used or pending.arrived.done():
        raise HTTPError(409, f"{noun} session already used.")
    if time.monotonic() > pending.expires_at:
        table.pop(session_id, None)
        raise HTTPError(410, f"{noun} session expired.", "The user gave up waiting.")
    pending.used = True
    del table[session_id]
    ws = web.WebSocketResponse(compress=False, heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    if pending.arrived.done():  # the user gave up while we were upgrading
        await close_socket(ws, WSCloseCode.GOING_AWAY, "the user is gone")
        return ws
    pending.arrived.set_result(ws)
    # The user's handler owns the socket from here; keep this request alive until it is done.
    await pending.finished.wait()
    return ws


async def _close_relays(app: web.Application) -> None:
    relays: set[web.WebSocketResponse] = app[RELAYS]
    sockets = list(relays)
    await asyncio.gather(
        *(close_socket(ws, WSCloseCode.GOING_AWAY, "server shutting down") for ws in sockets),
        return_exceptions=True,
    )


def setup(app: web.Application) -> None:
    app[PENDING] = {}
    app[RELAYS] = set()
    app.router.add_get("/api/v2/workspaceagents/me/pty-dial", pty_dial)
    app.router.add_get("/api/v2/workspaceagents/{agent_id}/pty", pty)
    app.on_shutdown.append(_close_relays)
