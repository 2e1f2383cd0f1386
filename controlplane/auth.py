"""Who is calling: agent tokens for ``/me/*``, user session tokens for everything else.

Tokens are looked up by their SHA-256 hash (never stored or logged in clear). WebSockets
can't always set headers, so the cookie and the query parameter are accepted too, in
Coder's order: cookie, query, header. A cookie is sent by the browser on its own, so
where it is the credential the request's origin is checked too.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from controlplane.appkeys import STORE
from controlplane.connguard import mark_authenticated
from controlplane.httpapi import HTTPError
from controlplane.store.records import AgentRecord, UserRecord, WorkspaceRecord
from controlplane.tokens import hash_token, well_formed
from controlplane.webui.security import check_origin, needs_origin_check

SESSION_HEADER: Final = "Coder-Session-Token"
SESSION_COOKIE: Final = "coder_session_token"
NOT_FOUND: Final = "Resource not found or you do not have access to this resource"


# Set on the request by authenticate_user: who signed it in and with which token (hash),
# so sockets it opens can be closed when that token is revoked.
AUTH_USER: Final = web.RequestKey("wsagent_auth_user", UserRecord)
AUTH_TOKEN_HASH: Final = web.RequestKey("wsagent_auth_token_hash", str)


def request_token(request: web.Request) -> str:
    return (
        request.cookies.get(SESSION_COOKIE)
        or request.query.get(SESSION_COOKIE)
        or request.headers.get(SESSION_HEADER)
        or ""
    )


def token_from_cookie(request: web.Request) -> bool:
    """Whether the token in use is the browser's ambient cookie (see ``request_token``)."""
    return bool(request.cookies.get(SESSION_COOKIE))


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
    mark_authenticated(request)
    return agent


async def authenticate_user(request: web.Request, *, app_hosts: bool = False) -> UserRecord:
    """The signed-in user. A browser's cookie counts only from our own origin for
    WebSockets and state-changing methods (``app_hosts``: or a subdomain app's origin)."""
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
    if token_from_cookie(request) and needs_origin_check(request):
        check_origin(request, app_hosts=app_hosts)
    request[AUTH_USER] = user
    request[AUTH_TOKEN_HASH] = hash_token(token)
    mark_authenticated(request)
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
