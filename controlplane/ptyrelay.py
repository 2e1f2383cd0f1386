"""Terminal relay (placeholder until the terminals work lands)."""

from __future__ import annotations

from aiohttp import web

from controlplane.auth import authenticate_user, owned_agent
from controlplane.httpapi import HTTPError
from controlplane.routes_user import parse_agent_id, require_connected


async def pty(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    await require_connected(request, agent)
    raise HTTPError(501, "Terminals are not available yet.")


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v2/workspaceagents/{agent_id}/pty", pty)
