"""``/``: the signed-in user's workspaces and agents, kept live over Server-Sent Events.

The page carries a first snapshot (so it renders before any request of its own), then
``dashboard.js`` follows ``/dashboard/events``: one ``snapshot`` event whenever the
user's agents change (status, lifecycle, version, apps' health, listening ports), and
``logs`` events with new startup-log lines. The server computes the snapshot every
``TICK`` seconds per open page and sends it only when it differs; listening ports are
asked of connected agents every ``PORTS_EVERY`` ticks.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiohttp import web

from controlplane import ports
from controlplane.appkeys import CONFIG, COORDINATOR, STORE
from controlplane.auth import request_token
from controlplane.httpapi import HTTPError
from controlplane.status import agent_status
from controlplane.store.records import AgentRecord, UserRecord
from controlplane.tokens import well_formed
from controlplane.webui.links import app_href, port_href, terminal_path
from controlplane.webui.pages import page_user, render
from controlplane.webui.security import csrf_token, set_csrf_cookie

log = structlog.get_logger()

TICK: Final = 1.0
PORTS_EVERY: Final = 5
KEEPALIVE_TICKS: Final = 15
MAX_STREAMS: Final = 1000  # open dashboards per server process
LOG_LINES: Final = 500  # per agent, on the page and per event
STREAMS: web.AppKey[set[web.StreamResponse]] = web.AppKey("dashboard_streams")
STOPPING: web.AppKey[asyncio.Event] = web.AppKey("dashboard_stopping")

PAGE: Final = """<section class="card"><div class="row"><h1>Workspaces</h1>
<span id="live" class="muted" role="status">connecting…</span></div>
<div id="workspaces" data-events="/dashboard/events"></div></section>
<script type="application/json" id="initial">{initial}</script>"""


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


async def _agent_view(
    app: web.Application,
    user: UserRecord,
    workspace: str,
    agent: AgentRecord,
    ports_seen: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    config = app[CONFIG]
    status, _ = agent_status(agent, datetime.now(UTC), config.inactive_timeout)
    if status == "connected" and not app[COORDINATOR].is_connected(agent.id):
        status = "disconnected"
    apps = await app[STORE].list_apps(agent.id)
    return {
        "id": agent.id,
        "name": agent.name,
        "status": status,
        "lifecycle": agent.lifecycle_state,
        "version": agent.version,
        "last_connected_at": _iso(agent.last_connected_at),
        "terminal": terminal_path(user.name, workspace, agent.name),
        "apps": [
            {
                "slug": a.spec.slug,
                "name": a.spec.display_name or a.spec.slug,
                "health": a.health,
                "href": app_href(config, user.name, workspace, agent.name, a.spec),
            }
            for a in apps
        ],
        "ports": ports_seen.get(agent.id, []) if status == "connected" else [],
    }


async def snapshot(
    app: web.Application, user: UserRecord, ports_seen: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    store = app[STORE]
    workspaces = []
    for ws in await store.list_workspaces(user.id):
        agents = [
            await _agent_view(app, user, ws.name, agent, ports_seen)
            for agent in await store.list_agents(ws.id)
        ]
        workspaces.append({"name": ws.name, "agents": agents})
    return {"user": user.name, "workspaces": workspaces}


async def _refresh_ports(
    app: web.Application, user: UserRecord, view: dict[str, Any], seen: dict[str, Any]
) -> None:
    config = app[CONFIG]
    for ws in view["workspaces"]:
        for agent in ws["agents"]:
            if agent["status"] != "connected":
                seen.pop(agent["id"], None)
                continue
            try:
                body = await ports.fetch_ports(app, agent["id"])
            except HTTPError:
                continue  # shown as before; the next round asks again
            seen[agent["id"]] = [
                {
                    "port": p.port,
                    "process": p.process_name,
                    "href": port_href(config, user.name, ws["name"], agent["name"], p.port),
                }
                for p in sorted(body.ports, key=lambda p: p.port)
            ]


def _json_for_script(value: object) -> str:
    # Inside <script type="application/json">: "</" must not end the element early.
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


async def show(request: web.Request) -> web.Response:
    user = await page_user(request)
    view = await snapshot(request.app, user, {})
    csrf = csrf_token(request)
    response = render(
        "Workspaces",
        PAGE.format(initial=_json_for_script(view)),
        user=user,
        csrf=csrf,
        scripts=["/static/dashboard.js"],
    )
    set_csrf_cookie(request, response, csrf)
    return response


async def _event(response: web.StreamResponse, name: str, value: object) -> None:
    data = json.dumps(value, separators=(",", ":"))
    await response.write(f"event: {name}\ndata: {data}\n\n".encode())


async def events(request: web.Request) -> web.StreamResponse:
    token = request_token(request)
    store = request.app[STORE]
    user = await store.user_by_token(token) if well_formed(token) else None
    if user is None:
        raise HTTPError(401, "You must be logged in to use this resource.")
    streams = request.app[STREAMS]
    if len(streams) >= MAX_STREAMS:
        raise HTTPError(503, "Too many open dashboards.", "Try again in a minute.")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events through as they come
        }
    )
    await response.prepare(request)
    streams.add(response)
    ports_seen: dict[str, list[dict[str, Any]]] = {}
    last_log: dict[str, int] = {}
    previous = ""
    tick = 0
    try:
        await response.write(b"retry: 2000\n\n")
        while True:
            if await store.user_by_token(token) is None:
                await _event(response, "signedout", {})
                break
            view = await snapshot(request.app, user, ports_seen)
            if tick % PORTS_EVERY == 0:
                await _refresh_ports(request.app, user, view, ports_seen)
                view = await snapshot(request.app, user, ports_seen)
            encoded = json.dumps(view, sort_keys=True)
            if encoded != previous:
                previous = encoded
                await _event(response, "snapshot", view)
            elif tick % KEEPALIVE_TICKS == 0:
                await response.write(b": keepalive\n\n")
            for ws in view["workspaces"]:
                for agent in ws["agents"]:
                    await _send_logs(request.app, response, agent["id"], last_log)
            tick += 1
            try:
                await asyncio.wait_for(request.app[STOPPING].wait(), TICK)
                break  # the server is stopping
            except TimeoutError:
                pass
    except (ConnectionError, RuntimeError):
        pass  # the page went away
    finally:
        streams.discard(response)
    return response


async def _send_logs(
    app: web.Application, response: web.StreamResponse, agent_id: str, last_log: dict[str, int]
) -> None:
    store = app[STORE]
    after = last_log.get(agent_id)
    if after is None:
        # First look: only the newest lines, as the page keeps no more than that.
        lines = (await store.list_startup_logs(agent_id))[-LOG_LINES:]
    else:
        lines = await store.list_startup_logs(agent_id, after=after, limit=LOG_LINES)
    if not lines:
        last_log.setdefault(agent_id, 0)
        return
    last_log[agent_id] = lines[-1].id
    await _event(
        response,
        "logs",
        {"agent": agent_id, "lines": [{"output": x.output, "level": x.level} for x in lines]},
    )


async def _stop_streams(app: web.Application) -> None:
    app[STOPPING].set()


def setup(app: web.Application) -> None:
    app[STREAMS] = set()
    app[STOPPING] = asyncio.Event()
    app.router.add_get("/", show)
    app.router.add_get("/dashboard/events", events)
    app.on_shutdown.append(_stop_streams)
