"""``/api/v2/workspaceagents/me/*``: what agents call, authenticated by agent token."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from agent.sdk.models import (
    LIFECYCLE_STATES,
    NANOS_PER_SECOND,
    REPORTABLE_APP_HEALTHS,
    GitAuthResponse,
    GitSSHKey,
    Metadata,
    PostAppHealthsRequest,
    PostLifecycleRequest,
    PostStartupRequest,
    Stats,
    StatsResponse,
)
from controlplane.appkeys import CONFIG, COORDINATOR, GITAUTH, STORE
from controlplane.auth import authenticate_agent, request_token
from controlplane.config import derp_map_for
from controlplane.gitauth import link_usable, match_provider, response_for
from controlplane.httpapi import HTTPError, decode_body, read_json, respond
from controlplane.refresher import CLOSE_TIMEOUT, REFRESHER, ConnectionRefresher, WatchedSocket
from controlplane.routes_shared import app_model
from controlplane.store.records import AgentRecord, WorkspaceRecord

log = structlog.get_logger()

ME: Final = "/api/v2/workspaceagents/me"
# The agent's shutdown script timeout when the template sets none.
SHUTDOWN_DEFAULT: Final = 300.0
# golang.org/x/mod/semver.IsValid: v-prefixed MAJOR[.MINOR[.PATCH[-PRE][+BUILD]]]
_SEMVER: Final = re.compile(
    r"v(0|[1-9]\d*)(\.(0|[1-9]\d*)(\.(0|[1-9]\d*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?)?)?"
)


def access_url(request: web.Request) -> str:
    return request.app[CONFIG].resolved_access_url()


async def _workspace_of(request: web.Request, agent: AgentRecord) -> WorkspaceRecord:
    workspace = await request.app[STORE].get_workspace(agent.workspace_id)
    if workspace is None:
        raise HTTPError(
            400, "Failed to get workspace.", f"workspace {agent.workspace_id} not found"
        )
    return workspace


def vscode_proxy_uri(
    request: web.Request, agent: AgentRecord, workspace: WorkspaceRecord, owner: str
) -> str:
    wildcard = request.app[CONFIG].wildcard_access_url
    if not wildcard:
        return ""
    # Parse, don't split on ":": an IPv6 host or a path in the access URL has colons or
    # slashes after the port.
    parts = urlsplit(access_url(request))
    scheme, port = parts.scheme, parts.port
    host = wildcard.replace(
        "*", f"{scheme}://{{{{port}}}}--{agent.name}--{workspace.name}--{owner}", 1
    )
    return host + (f":{port}" if port is not None else "")


async def metadata(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    store = request.app[STORE]
    workspace = await _workspace_of(request, agent)
    owner = await store.get_user(workspace.owner_id)
    apps = await store.list_apps(agent.id)
    providers = await store.list_gitauth_providers()
    spec = agent.spec
    body = Metadata(
        git_auth_configs=len(providers),
        vscode_port_proxy_uri=vscode_proxy_uri(
            request, agent, workspace, owner.name if owner else ""
        ),
        apps=tuple(app_model(a) for a in apps),
        derpmap=derp_map_for(access_url(request)),
        environment_variables=dict(spec.environment_variables),
        startup_script=spec.startup_script,
        startup_script_timeout_ns=round(spec.startup_script_timeout_seconds * NANOS_PER_SECOND),
        directory=spec.directory,
        motd_file=spec.motd_file,
        shutdown_script=spec.shutdown_script,
        shutdown_script_timeout_ns=round(spec.shutdown_script_timeout_seconds * NANOS_PER_SECOND),
        metadata=spec.metadata,
    )
    return respond(body.to_json())


async def post_startup(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    body = decode_body(PostStartupRequest.from_json, await read_json(request), "POST /me/startup")
    if not _SEMVER.fullmatch(body.version):
        raise HTTPError(
            400,
            "Invalid workspace agent version provided.",
            f'invalid semver version: "{body.version}"',
        )
    await request.app[STORE].set_agent_startup(agent.id, body.version, body.expanded_directory)
    log.info("agent.startup", agent_id=agent.id, version=body.version)
    return respond(None)


async def report_lifecycle(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    body = decode_body(
        PostLifecycleRequest.from_json, await read_json(request), "POST /me/report-lifecycle"
    )
    if body.state not in LIFECYCLE_STATES:
        allowed = " ".join(sorted(LIFECYCLE_STATES))
        raise HTTPError(
            400,
            "Invalid lifecycle state.",
            f'Invalid lifecycle state "{body.state}", must be be one of [{allowed}].',
        )
    store = request.app[STORE]
    await store.set_agent_lifecycle(agent.id, body.state)
    if body.state == "shutting_down":
        # The shutdown script may call back (git credentials...) with the agent's token:
        # an expiring one stays valid until the script's timeout has passed (Coder's stop
        # scripts failed that way, coder/coder#19467).
        grace = (agent.spec.shutdown_script_timeout_seconds or SHUTDOWN_DEFAULT) + 60
        await store.extend_agent_tokens(agent.id, datetime.now(UTC) + timedelta(seconds=grace))
    log.info("agent.lifecycle", agent_id=agent.id, state=body.state)
    return respond(None, 204)


async def app_health(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    body = decode_body(
        PostAppHealthsRequest.from_json, await read_json(request), "POST /me/app-health"
    )
    if not body.healths:
        raise HTTPError(400, "Health field is empty")
    store = request.app[STORE]
    apps = {a.id: a for a in await store.list_apps(agent.id)}
    changed: dict[str, str] = {}
    # Validate every entry before writing any (Coder's order).
    for app_id, health in body.healths.items():
        app = apps.get(app_id)
        if app is None:
            raise HTTPError(
                404, "Error setting workspace app health", f"workspace app name {app_id} not found"
            )
        if not app.spec.healthcheck_url:
            raise HTTPError(
                404,
                "Error setting workspace app health",
                f"health checking is disabled for workspace app {app_id}",
            )
        if health not in REPORTABLE_APP_HEALTHS:
            raise HTTPError(
                400,
                "Error setting workspace app health",
                f"workspace app health {health} is not allowed",
            )
        if app.health != health:
            changed[app_id] = health
    if changed:
        await store.set_app_healths(agent.id, changed)
    return respond(None)


async def report_stats(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    stats = decode_body(Stats.from_json, await read_json(request), "POST /me/report-stats")
    config = request.app[CONFIG]
    workspace = await _workspace_of(request, agent)
    if not stats.is_idle:
        # At most one stored row per spacing: an agent posting faster (or a client abusing
        # the endpoint) has its extra reports merged, which bounds the rows per agent.
        await request.app[STORE].insert_stats(
            agent, workspace.owner_id, stats, datetime.now(UTC), merge_within=config.stats_spacing
        )
    interval = int(config.stats_report_interval * NANOS_PER_SECOND)
    return respond(StatsResponse(interval).to_json())


async def git_ssh_key(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    workspace = await _workspace_of(request, agent)
    key = await request.app[STORE].git_ssh_key(workspace.owner_id)
    if key is None:
        raise HTTPError(
            500, "Internal error fetching git SSH key.", "the workspace owner has no git SSH key"
        )
    return respond(GitSSHKey(public_key=key.public_key, private_key=key.private_key).to_json())


async def git_auth(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    url = request.query.get("url", "")
    if not url:
        raise HTTPError(400, "Missing 'url' query parameter!")
    listen = "listen" in request.query  # a presence flag, as in Coder
    store = request.app[STORE]
    workspace = await _workspace_of(request, agent)
    provider = match_provider(await store.list_gitauth_providers(), url)
    if provider is None:
        raise HTTPError(404, f'No git provider found for URL "{url}"')
    if listen:
        transport = request.transport
        token = request_token(request)

        async def still_authorized() -> bool:
            current = await store.agent_by_token(token)
            return current is not None and current.id == agent.id

        link = await request.app[GITAUTH].wait_for_link(
            store,
            provider.id,
            workspace.owner_id,
            is_closing=lambda: transport is None or transport.is_closing(),
            still_authorized=still_authorized,
        )
        if link is None:
            await authenticate_agent(request)  # a revoked token ends the wait with a 401
            raise HTTPError(
                408, "Timed out waiting for git credentials.", "Poll again with listen."
            )
        return respond(response_for(link).to_json())
    link = await store.get_gitauth_link(provider.id, workspace.owner_id)
    if link is None or not link_usable(link, datetime.now(UTC)):
        return respond(
            GitAuthResponse(url=f"{access_url(request)}/gitauth/{provider.id}").to_json()
        )
    return respond(response_for(link).to_json())


async def coordinate(request: web.Request) -> web.StreamResponse:
    agent = await authenticate_agent(request)
    token = request_token(request)
    store = request.app[STORE]
    workspace = await _workspace_of(request, agent)
    if agent.build_number != workspace.latest_build:
        raise HTTPError(403, "Agent trying to connect from non-latest build.", "build is outdated")
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=1 << 20, compress=False)
    await ws.prepare(request)
    coordinator = request.app[COORDINATOR]
    # Recorded before the socket is registered: once clients can reach the agent through
    # it (nodes, terminals), its status already says connected, never "connecting".
    await store.agent_connected(agent.id, datetime.now(UTC))
    peer = await coordinator.serve_agent(agent.id, ws)
    log.info("agent.connected", agent_id=agent.id, workspace=workspace.name)

    refresher = request.app[REFRESHER]
    watched = WatchedSocket(agent.id, workspace.id, agent.build_number, token, peer)
    refresher.watch(watched)
    try:
        await coordinator.run_agent(agent.id, peer)
    finally:
        refresher.forget(watched)
        if watched.closing is not None:
            # The reader stops as soon as the close frame is out; cancelling the close now
            # would drop the connection under the agent's reply and it may read a reset
            # (1006) instead of the reason. The close is bounded by the socket's timeout.
            await asyncio.wait({watched.closing}, timeout=CLOSE_TIMEOUT)
        if not coordinator.is_connected(agent.id):
            # Bounded: the row update must land even while the server shuts down.
            await asyncio.shield(store.agent_disconnected(agent.id, datetime.now(UTC)))
        log.info("agent.disconnected", agent_id=agent.id)
    return ws


def setup(app: web.Application) -> None:
    app[REFRESHER] = ConnectionRefresher(
        app[STORE], app[COORDINATOR], app[CONFIG].agent_heartbeat_interval
    )

    async def close_refresher(app: web.Application) -> None:
        await app[REFRESHER].close()

    app.on_cleanup.append(close_refresher)
    app.router.add_get(f"{ME}/metadata", metadata)
    # Coder renamed the route when "metadata" came to mean the agent's metadata commands;
    # its agents from then on ask for the manifest.
    app.router.add_get(f"{ME}/manifest", metadata)
    app.router.add_post(f"{ME}/startup", post_startup)
    app.router.add_post(f"{ME}/report-lifecycle", report_lifecycle)
    app.router.add_post(f"{ME}/app-health", app_health)
    app.router.add_post(f"{ME}/report-stats", report_stats)
    app.router.add_get(f"{ME}/gitsshkey", git_ssh_key)
    app.router.add_get(f"{ME}/gitauth", git_auth)
    app.router.add_get(f"{ME}/coordinate", coordinate)
