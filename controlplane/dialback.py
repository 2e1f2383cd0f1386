"""Dial-back sessions on the server: how the user-facing data planes reach an agent.

A user's request (a terminal, a byte stream) makes the server send an extension request on
the agent's coordinate socket naming a random, single-use session ID that expires after
``pty_dial_timeout``. The agent answers by opening a new WebSocket to a ``/me/*-dial``
endpoint with that ID (:func:`accept_dial`), and only the agent it was issued to may use
it; or, for streams, by an error on the coordinate socket (:func:`reject_dial`).
:func:`dial_agent` waits for one or the other.

:func:`pipe` then relays messages between the user's socket and the agent's. Flow control:
each direction is one loop that reads a message and awaits its send. aiohttp stops reading
a socket whose unread messages pass a small limit, and a send waits while the other
socket's transport is above its high-water mark, so a slow reader on either end stops the
loop that feeds it and nothing buffers without bound. A send blocked longer than
``STALL_TIMEOUT`` means the reader is gone or hopeless: the relay closes both sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from agent.sdk.dialback import STALL_TIMEOUT, truncate_reason
from controlplane.appkeys import CONFIG, COORDINATOR
from controlplane.auth import authenticate_agent
from controlplane.coordinator import AgentNotConnected
from controlplane.httpapi import HTTPError

log = structlog.get_logger()

MAX_MESSAGE_BYTES: Final = 1 << 20
HEARTBEAT: Final = 15.0
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


PENDING: web.AppKey[dict[str, PendingDial]] = web.AppKey("dial_pending")
RELAYS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("dial_relays")


def sendable_code(code: int | None) -> int:
    return code if code is not None and code in _SENDABLE else WSCloseCode.INTERNAL_ERROR


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
        request = request_for(session_id)
        replica_url = app[CONFIG].replica_url
        if replica_url:
            # Several replicas: the agent dials back to this one, where the user's socket
            # is, not to whichever replica the load balancer picks.
            request["url"] = replica_url
        await app[COORDINATOR].send_to_agent(agent_id, request)
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
        log.exception("dialback.relay_failed", what=what)
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
                # asyncio.timeout, not wait_for: no extra task for every message relayed.
                async with asyncio.timeout(STALL_TIMEOUT):
                    await target.send_bytes(data)
            except TimeoutError:
                log.warning(
                    "dialback.relay_stalled",
                    what=what,
                    reader="agent" if who == "client" else "client",
                )
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
        await asyncio.wait_for(ws.close(code=code, message=truncate_reason(reason).encode()), 5.0)


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
    app.on_shutdown.append(_close_relays)
