"""``/@<owner>/<workspace>[.<agent>]`` to an agent the signed-in user owns, or 404."""

from __future__ import annotations

from aiohttp import web

from controlplane.appkeys import STORE
from controlplane.auth import NOT_FOUND
from controlplane.httpapi import HTTPError
from controlplane.store.records import AgentRecord, UserRecord, WorkspaceRecord


async def owned_agent_by_name(
    app: web.Application, user: UserRecord, owner: str, workspace_agent: str
) -> tuple[AgentRecord, WorkspaceRecord]:
    """Only the owner gets in; every other case is the same 404 (no existence leak).
    Without ``.<agent>`` the workspace must have exactly one agent."""
    if owner != user.name:
        raise HTTPError(404, NOT_FOUND)
    workspace_name, _, agent_name = workspace_agent.partition(".")
    store = app[STORE]
    workspace = await store.get_workspace_by_name(user.id, workspace_name)
    if workspace is None:
        raise HTTPError(404, NOT_FOUND)
    agents = await store.list_agents(workspace.id)
    if agent_name:
        agents = [a for a in agents if a.name == agent_name]
    if len(agents) != 1:
        raise HTTPError(404, NOT_FOUND)
    return agents[0], workspace
