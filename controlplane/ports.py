"""``GET /workspaceagents/{id}/listening-ports``: asked of the agent on demand.

The server sends a request over the agent's coordinate socket and waits (bounded) for the
matching reply, then filters like Coder: ports below 9, ports used by the agent's apps, and
well-known service ports are dropped (docs/protocol.md, "Listening ports").
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from agent.sdk.codec import Obj
from agent.sdk.errors import DecodeError
from agent.sdk.extensions import (
    TYPE_LISTENING_PORTS_RESPONSE,
    ListeningPortsRequest,
    ListeningPortsResponse,
)
from agent.sdk.workspaceagents import ListeningPortsResponse as PortsBody
from controlplane.appkeys import COORDINATOR, STORE
from controlplane.auth import authenticate_user, owned_agent
from controlplane.coordinator import AgentNotConnected
from controlplane.httpapi import HTTPError, respond
from controlplane.routes_shared import parse_agent_id, require_connected

REPLY_TIMEOUT: Final = 5.0
IGNORED_PORTS: Final = frozenset(
    {20, 21, 22, 23, 25, 53, 110, 143, 179, 389, 636, 465, 587, 989, 990, 993, 995}
    | {3306, 3389, 5432, 27017, 27018, 27019, 28017}
)
MIN_PORT: Final = 9

PENDING: web.AppKey[dict[str, asyncio.Future[ListeningPortsResponse]]] = web.AppKey("ports_pending")


def app_ports(urls: list[str]) -> set[int]:
    ports = set()
    for url in urls:
        try:
            port = urlsplit(url).port
        except ValueError:
            continue
        if port:
            ports.add(port)
    return ports


def filter_ports(reply: ListeningPortsResponse, used_by_apps: set[int]) -> PortsBody:
    kept = tuple(
        p
        for p in reply.ports
        if p.port >= MIN_PORT and p.port not in IGNORED_PORTS and p.port not in used_by_apps
    )
    return PortsBody(kept)


async def fetch_ports(app: web.Application, agent_id: str) -> PortsBody:
    """Ask the agent for its listening ports (bounded wait) and filter them like Coder.
    The caller has checked that the user may see this agent and that it is connected."""
    request_id = str(uuid.uuid4())
    pending = app[PENDING]
    future: asyncio.Future[ListeningPortsResponse] = asyncio.get_running_loop().create_future()
    pending[request_id] = future
    try:
        await app[COORDINATOR].send_to_agent(agent_id, ListeningPortsRequest(request_id).to_json())
        reply = await asyncio.wait_for(future, REPLY_TIMEOUT)
    except AgentNotConnected as exc:
        raise HTTPError(500, "Failed to dial workspace agent.", str(exc)) from None
    except TimeoutError:
        raise HTTPError(
            500,
            "Internal error fetching listening ports.",
            f"the agent did not answer within {REPLY_TIMEOUT:.0f}s",
        ) from None
    finally:
        pending.pop(request_id, None)
    if reply.error:
        raise HTTPError(500, "Could not scan for listening ports.", reply.error)
    apps = await app[STORE].list_apps(agent_id)
    return filter_ports(reply, app_ports([a.spec.url for a in apps]))


async def listening_ports(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    await require_connected(request, agent)
    return respond((await fetch_ports(request.app, agent.id)).to_json())


def setup(app: web.Application) -> None:
    pending: dict[str, asyncio.Future[ListeningPortsResponse]] = {}
    app[PENDING] = pending

    def on_reply(agent_id: str, value: dict[str, Any]) -> None:
        try:
            reply = ListeningPortsResponse.from_obj(Obj(value, "listening ports reply"))
        except DecodeError:
            return
        future = pending.get(reply.request_id)
        if future is not None and not future.done():
            future.set_result(reply)

    app[COORDINATOR].on_agent_message(TYPE_LISTENING_PORTS_RESPONSE, on_reply)
    app.router.add_get("/api/v2/workspaceagents/{agent_id}/listening-ports", listening_ports)
