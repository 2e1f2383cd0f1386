"""The app proxy: a workspace's apps and ports in the browser, through the agent's stream
plane (``tcp:<port>`` streams opened by :func:`controlplane.streams.open_stream`).

Path-based, as Coder: ``/@<owner>/<workspace>.<agent>/apps/<slug>/...`` (the app's URL
path is prepended) and ``/@<owner>/<workspace>.<agent>/ports/<port>/...``. With
``--wildcard-access-url``, also ``<slug>--<agent>--<workspace>--<owner>.<wildcard>`` and
``<port>--...`` (see :mod:`controlplane.webui.subdomains`).

Only the owner gets in; anyone else gets 404. The user's credentials (the session cookie,
the ``Coder-Session-Token`` header, the ``coder_session_token`` query parameter and our
CSRF cookie) never reach the app; ``X-Forwarded-For``, ``-Proto`` and ``-Host`` are added.
Failures are HTML pages: agent offline, app unhealthy, connection refused.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote, urlencode, urlsplit

import structlog
from aiohttp import web

from agent.sdk.extensions import TARGET_TCP, Target
from controlplane.appkeys import CONFIG, COORDINATOR, STORE
from controlplane.auth import (
    AUTH_TOKEN_HASH,
    AUTH_USER,
    SESSION_COOKIE,
    SESSION_HEADER,
    authenticate_user,
    request_token,
)
from controlplane.httpapi import Handler, HTTPError
from controlplane.store.records import AgentRecord, UserRecord, WorkspaceRecord
from controlplane.streams import StreamOpenError, open_stream
from controlplane.tokens import hash_token, well_formed
from controlplane.webui.links import SubdomainTarget, parse_subdomain
from controlplane.webui.pages import LoginRequired, error_page, page_user, wants_html
from controlplane.webui.resolve import owned_agent_by_name
from controlplane.webui.security import (
    CSRF_COOKIE,
    is_websocket,
    needs_origin_check,
    safe_return_to,
)
from controlplane.webui.upstream import HOP_BY_HOP, UpstreamError, forward_http, forward_websocket

log = structlog.get_logger()

APP_COOKIE: Final = "wsagent_app_token"  # a subdomain app's session (see subdomains)
PRIVATE_COOKIES: Final = frozenset({SESSION_COOKIE, CSRF_COOKIE, APP_COOKIE})
DROPPED_HEADERS: Final = HOP_BY_HOP | {
    "host",
    "content-length",
    SESSION_HEADER.lower(),
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
}
APP_ROUTE: Final = "/@{owner}/{workspace_agent}/apps/{slug}"
PORT_ROUTE: Final = "/@{owner}/{workspace_agent}/ports/{port}"


def strip_cookies(header: str) -> str:
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in PRIVATE_COOKIES:
            kept.append(part.strip())
    return "; ".join(kept)


def strip_query(query: str) -> str:
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] != SESSION_COOKIE]
    return "&".join(kept)


def forwarded_headers(request: web.Request, scheme: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in request.headers.items():
        low = name.lower()
        if low in DROPPED_HEADERS:
            continue
        if low == "cookie":
            value = strip_cookies(value)
            if not value:
                continue
        out.append((name, value))
    client = request.remote or ""
    previous = request.headers.get("X-Forwarded-For", "")
    out += [
        ("Host", request.host),
        ("X-Forwarded-For", f"{previous}, {client}" if previous else client),
        ("X-Forwarded-Proto", scheme),
        ("X-Forwarded-Host", request.host),
    ]
    return out


def upstream_path(base: str, tail: str, query: str) -> str:
    path = base.rstrip("/") + "/" + tail.lstrip("/")
    query = strip_query(query)
    return path + (f"?{query}" if query else "")


async def proxy_user(request: web.Request, *, app_hosts: bool = False) -> UserRecord:
    """The signed-in user; a browser without a session goes through ``/login``."""
    if not request_token(request) and wants_html(request) and not is_websocket(request):
        raise LoginRequired(request.path_qs)
    return await authenticate_user(request, app_hosts=app_hosts)


async def app_target(
    request: web.Request, agent: AgentRecord, slug: str
) -> tuple[int, str] | web.Response:
    """The app's loopback port and base path, or an error page."""
    for app in await request.app[STORE].list_apps(agent.id):
        if app.spec.slug != slug:
            continue
        parts = urlsplit(app.spec.url)
        if app.spec.external or parts.scheme not in ("http", "ws") or not parts.hostname:
            raise HTTPError(404, "This app is not served through the proxy.")
        if app.health == "unhealthy":
            return error_page(
                502,
                "App unhealthy",
                f"The app {slug!r} is failing its health check in the workspace.",
            )
        try:
            port = parts.port or 80
        except ValueError:
            raise HTTPError(404, "This app's URL has an invalid port.") from None
        return port, parts.path or "/"
    raise HTTPError(404, "Resource not found or you do not have access to this resource")


def _offline(agent: AgentRecord) -> web.Response:
    return error_page(
        502,
        "Workspace agent offline",
        f"The agent {agent.name!r} is not connected, so its apps cannot be reached."
        " Start the workspace, or wait for the agent to reconnect.",
    )


async def forward(
    request: web.Request,
    agent: AgentRecord,
    port: int,
    path: str,
    scheme: str,
) -> web.StreamResponse:
    if not request.app[COORDINATOR].is_connected(agent.id):
        return _offline(agent)
    target = Target(TARGET_TCP, port)
    try:
        stream = await open_stream(request.app, agent.id, target, client_addr=request.remote or "")
    except StreamOpenError as exc:
        if exc.status == 400:
            return _offline(agent)
        return error_page(
            502,
            "Connection refused",
            f"Nothing accepted a connection on port {port} in the workspace ({exc.detail}).",
        )
    headers = forwarded_headers(request, scheme)
    try:
        async with stream:
            if is_websocket(request):
                return await forward_websocket(request, stream, path, headers)
            return await forward_http(request, stream, path, headers)
    except UpstreamError as exc:
        return error_page(exc.status, "App error", f"{exc.message} {exc.detail}".strip())
    except (ConnectionError, TimeoutError) as exc:
        log.info("proxy.stream_failed", agent_id=agent.id, port=port, error=str(exc))
        return error_page(502, "App error", "The connection to the app was lost.")


async def _resolve(request: web.Request) -> tuple[UserRecord, AgentRecord, WorkspaceRecord]:
    user = await proxy_user(request)
    agent, workspace = await owned_agent_by_name(
        request.app, user, request.match_info["owner"], request.match_info["workspace_agent"]
    )
    return user, agent, workspace


def _tail(request: web.Request, prefix: str) -> tuple[str, str]:
    raw_path, _, raw_query = request.raw_path.partition("?")
    return raw_path[len(prefix) :], raw_query


def _slash_redirect(request: web.Request) -> web.Response:
    location = request.path + "/" + (f"?{request.query_string}" if request.query_string else "")
    return web.Response(status=308, headers={"Location": location})


async def app_path(request: web.Request) -> web.StreamResponse:
    _, agent, _ = await _resolve(request)
    slug = request.match_info["slug"]
    found = await app_target(request, agent, slug)
    if isinstance(found, web.Response):
        return found
    prefix = request.path.split(f"/apps/{slug}", 1)[0] + f"/apps/{slug}"
    if request.path == prefix:
        return _slash_redirect(request)
    port, base = found
    tail, query = _tail(request, prefix)
    return await forward(request, agent, port, upstream_path(base, tail, query), _scheme(request))


async def port_path(request: web.Request) -> web.StreamResponse:
    _, agent, _ = await _resolve(request)
    raw = request.match_info["port"]
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise HTTPError(404, "Resource not found or you do not have access to this resource")
    prefix = request.path.split(f"/ports/{raw}", 1)[0] + f"/ports/{raw}"
    if request.path == prefix:
        return _slash_redirect(request)
    tail, query = _tail(request, prefix)
    return await forward(
        request, agent, int(raw), upstream_path("/", tail, query), _scheme(request)
    )


def _scheme(request: web.Request) -> str:
    return urlsplit(request.app[CONFIG].resolved_access_url()).scheme or "http"


# ---------------------------------------------------------------------------- subdomains
#
# With --wildcard-access-url, <slug|port>--<agent>--<workspace>--<owner>.<wildcard> is an
# app on its own origin. The session cookie belongs to the access URL's host, so an app
# host gets a session of its own: a browser without one is sent to <access URL>/apps-auth
# (signing in there if needed), which mints a session token for that user and sends the
# browser back to <app host>/.wsagent/app-auth?token=..., where the proxy sets it as the
# host-only wsagent_app_token cookie and redirects to the page first asked for. The app
# never sees either step, nor the cookie.

APP_AUTH_PATH: Final = "/.wsagent/app-auth"


def _app_origin(request: web.Request) -> str:
    return f"{_scheme(request)}://{request.host}".lower()


def _app_token(request: web.Request) -> str:
    return (
        request.cookies.get(APP_COOKIE)
        or request.query.get(SESSION_COOKIE)
        or request.headers.get(SESSION_HEADER)
        or ""
    )


async def _subdomain(request: web.Request, target: SubdomainTarget) -> web.StreamResponse:
    config = request.app[CONFIG]
    if request.path == APP_AUTH_PATH:
        return await _accept_app_token(request)
    token = _app_token(request)
    user = await request.app[STORE].user_by_token(token) if well_formed(token) else None
    if user is None:
        if wants_html(request) and request.method == "GET" and not is_websocket(request):
            back = f"{_app_origin(request)}{request.path_qs}"
            location = f"{config.resolved_access_url()}/apps-auth?redirect={quote(back, safe='')}"
            return web.Response(status=303, headers={"Location": location})
        raise HTTPError(401, "You must be logged in to use this resource.")
    # As authenticate_user does: its sockets close when this token is revoked.
    request[AUTH_USER] = user
    request[AUTH_TOKEN_HASH] = hash_token(token)
    if request.cookies.get(APP_COOKIE) and needs_origin_check(request):
        origin = request.headers.get("Origin", "").lower()
        if origin != _app_origin(request):
            raise HTTPError(403, "Cross-origin request refused.", f"Origin {origin[:100]!r}.")
    agent, _ = await owned_agent_by_name(
        request.app, user, target.owner, f"{target.workspace}.{target.agent}"
    )
    raw_path, _, raw_query = request.raw_path.partition("?")
    if target.port:
        return await forward(
            request, agent, target.port, upstream_path("/", raw_path, raw_query), _scheme(request)
        )
    found = await app_target(request, agent, target.slug)
    if isinstance(found, web.Response):
        return found
    port, base = found
    return await forward(
        request, agent, port, upstream_path(base, raw_path, raw_query), _scheme(request)
    )


async def _accept_app_token(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    if not well_formed(token) or await request.app[STORE].user_by_token(token) is None:
        raise HTTPError(401, "Invalid session token.", "Open the app from the dashboard again.")
    response = web.Response(
        status=303,
        headers={
            "Location": safe_return_to(request.query.get("redirect")),
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )
    ttl = request.app[CONFIG].session_ttl
    response.set_cookie(
        APP_COOKIE,
        token,
        max_age=int(ttl),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=_scheme(request) == "https",
    )
    return response


async def apps_auth(request: web.Request) -> web.Response:
    """On the access URL: hand a signed-in owner's browser a session for an app host."""
    user = await page_user(request)
    config = request.app[CONFIG]
    redirect = urlsplit(request.query.get("redirect", ""))
    target = parse_subdomain(config, redirect.netloc)
    if target is None or redirect.scheme != _scheme(request):
        raise HTTPError(400, "The redirect is not an app on this deployment.")
    if target.owner != user.name:
        raise HTTPError(404, "Resource not found or you do not have access to this resource")
    token = await request.app[STORE].create_user_token(user.id, config.session_ttl)
    path = redirect.path or "/"
    if redirect.query:
        path += f"?{redirect.query}"
    query = urlencode({"token": token, "redirect": path})
    location = f"{redirect.scheme}://{redirect.netloc}{APP_AUTH_PATH}?{query}"
    return web.Response(
        status=303, headers={"Location": location, "Referrer-Policy": "no-referrer"}
    )


@web.middleware
async def subdomain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    target = parse_subdomain(request.app[CONFIG], request.host)
    if target is None:
        return await handler(request)
    return await _subdomain(request, target)


def setup(app: web.Application) -> None:
    for route, handler in ((APP_ROUTE, app_path), (PORT_ROUTE, port_path)):
        app.router.add_route("*", route, handler)
        app.router.add_route("*", route + "/{tail:.*}", handler)
    app.router.add_get("/apps-auth", apps_auth)
    if app[CONFIG].wildcard_access_url:
        app.middlewares.append(subdomain_middleware)
