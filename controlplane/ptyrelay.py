"""The terminal data plane on the server (docs/protocol.md "Terminals").

``GET /workspaceagents/{id}/pty`` (user) asks the agent, over its coordinate socket, to dial
back ``GET /workspaceagents/me/pty-dial?session=<id>`` (agent). The session ID is random,
single-use and expires after ``pty_dial_timeout``; only the agent it was issued to may use
it. Once the agent is on the line the server sends the reconnecting-PTY init frame and then
is a plain pipe: user messages to the agent, agent messages to the user. The dial-back
session and the relay's flow control are controlplane/dialback.py's.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

import structlog
from aiohttp import WSCloseCode, web

from agent.sdk.dialback import truncate_reason
from agent.sdk.extensions import PTYRequest
from agent.sdk.pty import ReconnectingPTYInit
from controlplane.auth import authenticate_user, owned_agent
from controlplane.dialback import (
    HEARTBEAT,
    MAX_MESSAGE_BYTES,
    RELAYS,
    DialError,
    accept_dial,
    close_socket,
    dial_agent,
    pipe,
)
from controlplane.httpapi import HTTPError
from controlplane.routes_shared import parse_agent_id, require_connected

log = structlog.get_logger()

DEFAULT_DIMENSION: Final = 80
_UINT: Final = re.compile(r"[0-9]+")


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


# ---------------------------------------------------------------------------- user side


def parse_command(raw: str) -> str:
    # No exec can take a NUL byte: refuse it here rather than have the agent fail to start it.
    if "\0" in raw:
        raise HTTPError(
            400,
            "Query param 'command' must not contain a NUL byte.",
            validations=[("command", "contains a NUL byte")],
        )
    return raw


async def pty(request: web.Request) -> web.StreamResponse:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    query = request.query
    command = parse_command(query.get("command", ""))
    await require_connected(request, agent)
    init = ReconnectingPTYInit(
        id=parse_reconnect(query.get("reconnect")),
        height=parse_dimension(query.get("height")),
        width=parse_dimension(query.get("width")),
        command=command,
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
        reason = truncate_reason(f"dial workspace agent: {exc}")
        await user_ws.close(code=WSCloseCode.INTERNAL_ERROR, message=reason.encode())
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


# ---------------------------------------------------------------------------- agent side


async def pty_dial(request: web.Request) -> web.StreamResponse:
    return await accept_dial(request, "PTY")


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v2/workspaceagents/me/pty-dial", pty_dial)
    app.router.add_get("/api/v2/workspaceagents/{agent_id}/pty", pty)
