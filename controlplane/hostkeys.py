"""SSH host keys: agents report theirs, owners fetch them to verify the agent they reach.

``POST /api/v2/workspaceagents/me/ssh-host-key`` (agent token) stores the agent's public
key; ``GET /api/v2/workspaceagents/{id}/ssh-host-key`` returns it to the workspace's owner
(anyone else: 404, as for every agent endpoint), or 404 ``No SSH host key published.``
when the agent has not reported one yet. ``wsagent ssh`` and ``wsagent config-ssh`` write
it to a known_hosts file so that ssh verifies the host instead of skipping the check.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from agent.sdk.hostkeys import SSHHostKey
from controlplane.appkeys import STORE
from controlplane.auth import authenticate_agent, authenticate_user, owned_agent
from controlplane.httpapi import HTTPError, decode_body, read_json, respond
from controlplane.routes_shared import parse_agent_id

log = structlog.get_logger()

REPORT_ROUTE = "/api/v2/workspaceagents/me/ssh-host-key"
GET_ROUTE = "/api/v2/workspaceagents/{agent_id}/ssh-host-key"


async def report(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    body = decode_body(SSHHostKey.from_json, await read_json(request), f"POST {REPORT_ROUTE}")
    store = request.app[STORE]
    if await store.agent_ssh_host_key(agent.id) != body.public_key:
        await store.set_agent_ssh_host_key(agent.id, body.public_key)
        log.info("agent.ssh_host_key", agent_id=agent.id, key_type=body.public_key.split()[0])
    return respond(None, 204)


async def fetch(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    public_key = await request.app[STORE].agent_ssh_host_key(agent.id)
    if not public_key:
        raise HTTPError(
            404,
            "No SSH host key published.",
            "The agent reports its key when it connects; is it connected and up to date?",
        )
    return respond(SSHHostKey(public_key).to_json())


def setup(app: web.Application) -> None:
    app.router.add_post(REPORT_ROUTE, report)
    app.router.add_get(GET_ROUTE, fetch)
