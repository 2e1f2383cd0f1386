"""The control plane's Prometheus endpoint, on its own address (``--metrics-address``).

A middleware times every request into a histogram labelled by the route's canonical path
(``/api/v2/workspaceagents/{agent_id}/pty``, never the raw URL, so cardinality stays that of
the route table). WebSocket requests (the coordinate socket, terminal relays) live for
minutes: they are counted, not timed, so they do not swamp the latency buckets. Relayed
terminal sessions are the in-flight requests on the relay route. The text format comes from
agent.sdk.promtext, which the agent shares; no client library is needed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from aiohttp import web

from agent.sdk.promtext import (
    CONTENT_TYPE,
    COUNTER,
    GAUGE,
    Family,
    Histogram,
    counter,
    gauge,
    render,
)
from controlplane.appkeys import COORDINATOR
from controlplane.collector import PAUSES
from controlplane.metadatabatch import METADATA

log = structlog.get_logger()

PTY_ROUTE: Final = "/api/v2/workspaceagents/{agent_id}/pty"
UNMATCHED: Final = "unmatched"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServerMetrics:
    def __init__(self) -> None:
        self.latency = Histogram(
            "wsagent_server_http_request_duration_seconds",
            "HTTP request latency by route (WebSocket upgrades are not timed).",
            overflow_labels=(("method", "other"), ("route", "other"), ("code", "other")),
        )
        self.in_flight: dict[str, int] = {}
        self.websockets_total: dict[str, int] = {}

    def families(self, connected_agents: int) -> list[Family]:
        return [
            gauge(
                "wsagent_server_connected_agents",
                "Agents with an open coordinate socket.",
                connected_agents,
            ),
            self.latency.family(),
            gauge(
                "wsagent_server_pty_sessions",
                "Terminal sessions being relayed (including those still dialling).",
                self.in_flight.get(PTY_ROUTE, 0),
            ),
            counter(
                "wsagent_server_pty_sessions_total",
                "Terminal relays served (counted when they end).",
                self.websockets_total.get(PTY_ROUTE, 0),
            ),
            Family(
                "wsagent_server_http_requests_in_flight",
                GAUGE,
                "Requests being served, by route (WebSockets included).",
                [("", (("route", r),), n) for r, n in sorted(self.in_flight.items())],
            ),
            Family(
                "wsagent_server_websocket_requests_total",
                COUNTER,
                "WebSocket upgrades, by route.",
                [("", (("route", r),), n) for r, n in sorted(self.websockets_total.items())],
            ),
        ]


METRICS: web.AppKey[ServerMetrics] = web.AppKey("metrics")


def route_of(request: web.Request) -> str:
    """The canonical path of the matched route; one label for everything unmatched."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def setup(app: web.Application) -> None:
    """Install the timing middleware outermost, so it sees the status the client gets."""
    metrics = app[METRICS] = ServerMetrics()

    @web.middleware
    async def timing(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_of(request)
        started = time.perf_counter()
        metrics.in_flight[route] = metrics.in_flight.get(route, 0) + 1
        code = "500"
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            code = str(response.status)
            return response
        except web.HTTPException as exc:
            code = str(exc.status)
            raise
        finally:
            metrics.in_flight[route] -= 1
            if isinstance(response, web.WebSocketResponse):
                metrics.websockets_total[route] = metrics.websockets_total.get(route, 0) + 1
            else:
                labels = (("method", request.method), ("route", route), ("code", code))
                metrics.latency.observe(labels, time.perf_counter() - started)

    app.middlewares.insert(0, timing)


def render_page(app: web.Application) -> str:
    families = app[METRICS].families(app[COORDINATOR].connected_agents) + PAUSES.families()
    batcher = app.get(METADATA)
    if batcher is not None:
        families += [
            counter(
                "wsagent_server_metadata_posts_total",
                "Agent metadata results posted.",
                batcher.posts,
            ),
            counter(
                "wsagent_server_metadata_writes_total",
                "Store transactions writing agent metadata (one per tick at most).",
                batcher.writes,
            ),
            counter(
                "wsagent_server_metadata_rows_written_total",
                "Agent metadata rows written (the newest per agent and key in a tick).",
                batcher.rows_written,
            ),
        ]
    return render(families)


async def start_endpoint(app: web.Application, host: str, port: int) -> web.AppRunner | None:
    """Serve GET /metrics for ``app`` on host:port; a busy port is a warning, not fatal."""

    async def scrape(request: web.Request) -> web.Response:
        del request
        return web.Response(
            body=render_page(app).encode("utf-8"), headers={"Content-Type": CONTENT_TYPE}
        )

    endpoint = web.Application()
    endpoint.router.add_get("/metrics", scrape)
    runner = web.AppRunner(endpoint, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        log.warning("metrics.listen_failed", address=f"{host}:{port}", error=str(exc))
        return None
    bound = runner.addresses[0] if runner.addresses else (host, port)
    log.info("metrics.listening", address=f"{host}:{bound[1]}", path="/metrics")
    return runner
