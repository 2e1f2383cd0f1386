"""User-facing agent endpoints: ``/api/v2/workspaceagents/{id}[/...]`` and a few helpers
(``/users/me``, ``/workspaces``) that the CLI and the demo use."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from agent.sdk.workspaceagents import WorkspaceAgent, WorkspaceAgentConnectionInfo
from controlplane.appkeys import CONFIG, COORDINATOR, STORE
from controlplane.auth import authenticate_user, owned_agent
from controlplane.config import derp_map_for
from controlplane.httpapi import respond
from controlplane.metadatabatch import current_metadata
from controlplane.routes_shared import app_model, parse_agent_id
from controlplane.status import agent_status, derp_latency
from controlplane.store.records import AgentRecord

AGENTS: Final = "/api/v2/workspaceagents"


async def agent_model(request: web.Request, agent: AgentRecord) -> WorkspaceAgent:
    config = request.app[CONFIG]
    status, disconnected_at = agent_status(agent, datetime.now(UTC), config.inactive_timeout)
    apps = await request.app[STORE].list_apps(agent.id)
    spec = agent.spec
    return WorkspaceAgent(
        id=agent.id,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
        first_connected_at=agent.first_connected_at,
        last_connected_at=agent.last_connected_at,
        disconnected_at=disconnected_at,
        status=status,
        lifecycle_state=agent.lifecycle_state,
        name=spec.name,
        resource_id=agent.resource_id,
        instance_id=spec.instance_id,
        architecture=spec.architecture,
        environment_variables=dict(spec.environment_variables),
        operating_system=spec.operating_system,
        startup_script=spec.startup_script,
        startup_logs_length=agent.startup_logs_length,
        startup_logs_overflowed=agent.startup_logs_overflowed,
        shutdown_script=spec.shutdown_script,
        shutdown_script_timeout_seconds=math.ceil(spec.shutdown_script_timeout_seconds),
        metadata=tuple(await current_metadata(request.app, agent)),
        directory=spec.directory,
        expanded_directory=agent.expanded_directory,
        version=agent.version,
        apps=tuple(app_model(a) for a in apps),
        connection_timeout_seconds=spec.connection_timeout_seconds,
        troubleshooting_url=spec.troubleshooting_url or config.troubleshooting_url,
        # Coder's field is whole seconds; a sub-second timeout shows as 1.
        startup_script_timeout_seconds=math.ceil(spec.startup_script_timeout_seconds),
        login_before_ready=spec.login_before_ready,
        latency=derp_latency(
            request.app[COORDINATOR].agent_node(agent.id),
            derp_map_for(config.resolved_access_url()),
        ),
    )


async def get_agent(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    return respond((await agent_model(request, agent)).to_json())


async def connection_info(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    await owned_agent(request, user, parse_agent_id(request))
    derp = derp_map_for(request.app[CONFIG].resolved_access_url())
    return respond(WorkspaceAgentConnectionInfo(derp).to_json())


async def client_coordinate(request: web.Request) -> web.StreamResponse:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=1 << 20, compress=False)
    await ws.prepare(request)
    await request.app[COORDINATOR].serve_client(agent.id, ws)
    return ws


async def whoami(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    return respond({"id": user.id, "username": user.name, "email": user.email})


async def list_workspaces(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    store = request.app[STORE]
    out: list[dict[str, Any]] = []
    for ws in await store.list_workspaces(user.id):
        agents = [(await agent_model(request, a)).to_json() for a in await store.list_agents(ws.id)]
        out.append(
            {
                "id": ws.id,
                "name": ws.name,
                "owner_id": ws.owner_id,
                "owner_name": user.name,
                "latest_build": ws.latest_build,
                "agents": agents,
            }
        )
    return respond({"workspaces": out, "count": len(out)})


def setup(app: web.Application) -> None:
    app.router.add_get(f"{AGENTS}/{{agent_id}}", get_agent)
    app.router.add_get(f"{AGENTS}/{{agent_id}}/connection", connection_info)
    app.router.add_get(f"{AGENTS}/{{agent_id}}/coordinate", client_coordinate)
    app.router.add_get("/api/v2/users/me", whoami)
    app.router.add_get("/api/v2/workspaces", list_workspaces)
