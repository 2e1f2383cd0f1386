"""Who is calling: agent tokens for ``/me/*``, user session tokens for everything else.

Tokens are looked up by their SHA-256 hash (never stored or logged in clear). WebSockets
can't always set headers, so the cookie and the query parameter are accepted too, in
Coder's order: cookie, query, header.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from controlplane.appkeys import STORE
from controlplane.httpapi import HTTPError
from controlplane.store.records import AgentRecord, UserRecord, WorkspaceRecord
from controlplane.tokens import well_formed

SESSION_HEADER: Final = "Coder-Session-Token"
SESSION_COOKIE: Final = "coder_session_token"
NOT_FOUND: Final = "Resource not found or you do not have access to this resource"


def request_token(request: web.Request) -> str:
    return (
        request.cookies.get(SESSION_COOKIE)
        or request.query.get(SESSION_COOKIE)
        or request.headers.get(SESSION_HEADER)
        or ""
    )


async def authenticate_agent(request: web.Request) -> AgentRecord:
    token = request_token(request)
    if not token:
        raise HTTPError(401, f'Cookie "{SESSION_COOKIE}" must be provided.')
    if not well_formed(token):
        raise HTTPError(
            401,
            "Workspace agent token invalid.",
            f"An agent token must be a URL-safe random string (len {len(token)}).",
        )
    agent = await request.app[STORE].agent_by_token(token)
    if agent is None:
        raise HTTPError(
            401,
            "Workspace agent not authorized.",
            "The agent token is unknown, revoked or expired; the workspace may have been rebuilt.",
        )
    return agent


async def authenticate_user(request: web.Request) -> UserRecord:
    token = request_token(request)
    if not token:
        raise HTTPError(
            401,
            "You must be logged in to use this resource.",
            f'Provide the "{SESSION_HEADER}" header or the "{SESSION_COOKIE}" cookie.',
        )
    if not well_formed(token):
        raise HTTPError(401, "Invalid session token.", f"len {len(token)}")
    user = await request.app[STORE].user_by_token(token)
    if user is None:
        raise HTTPError(401, "Invalid session token.", "The token is unknown, revoked or expired.")
    return user


async def owned_agent(
    request: web.Request, user: UserRecord, agent_id: str
) -> tuple[AgentRecord, WorkspaceRecord]:
    """The agent and its workspace, if ``user`` owns them; 404 otherwise (no existence leak)."""
    store = request.app[STORE]
    agent = await store.get_agent(agent_id)
    workspace = await store.get_workspace(agent.workspace_id) if agent else None
    if agent is None or workspace is None or workspace.owner_id != user.id:
        raise HTTPError(404, NOT_FOUND)
    return agent, workspace
