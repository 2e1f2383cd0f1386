"""What keeps a browser's ambient cookie from being used by another site.

- Cookie-authenticated WebSockets and state-changing requests from a browser must come
  from the access URL's origin (``Origin`` header); token-in-header clients (the CLI,
  agents) carry no ambient credential, so they are not checked.
- Every form post also carries a CSRF token equal to the ``wsagent_csrf`` cookie (double
  submit): a page on another origin can neither read that cookie nor set it.
- Form bodies are read under a small cap, counted as they arrive (chunked bodies too).
- Every HTML response gets a strict Content-Security-Policy and framing/referrer headers.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from controlplane.appkeys import CONFIG
from controlplane.config import ServerConfig
from controlplane.httpapi import HTTPError, read_body

CSRF_COOKIE: Final = "wsagent_csrf"
CSRF_FIELD: Final = "csrf"
MAX_FORM_BYTES: Final = 16 * 1024
MAX_FORM_FIELDS: Final = 32
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Marks a response the app proxy relays: the app's own headers and policy stand.
PROXIED: Final = web.ResponseKey("wsagent_proxied", bool)

CSP: Final = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:;"
    # xterm.js adds <style> elements for its themes at run time.
    " style-src 'self' 'unsafe-inline'; font-src 'self'; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HTML_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` as a browser writes it in ``Origin`` (default port left out)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return ""
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def access_origin(config: ServerConfig) -> str:
    return origin_of(config.resolved_access_url())


def wildcard_origin_pattern(config: ServerConfig) -> re.Pattern[str] | None:
    """Origins of subdomain apps (``*.apps.example.com``), same scheme and port as the
    access URL's; None without ``--wildcard-access-url``."""
    wildcard = config.wildcard_access_url.strip()
    if not wildcard.startswith("*."):
        return None
    suffix, _, port = wildcard[2:].lower().partition(":")
    access = urlsplit(config.resolved_access_url())
    scheme = access.scheme.lower()
    if not port and access.port is not None and access.port != _DEFAULT_PORTS.get(scheme):
        port = str(access.port)
    tail = f":{port}" if port and int(port) != _DEFAULT_PORTS.get(scheme) else ""
    return re.compile(rf"{re.escape(scheme)}://[a-z0-9-]+\.{re.escape(suffix)}{re.escape(tail)}")


def origin_allowed(config: ServerConfig, origin: str, *, app_hosts: bool = False) -> bool:
    origin = origin.strip().lower()
    if not origin or origin == "null":
        return False
    if origin == access_origin(config):
        return True
    pattern = wildcard_origin_pattern(config) if app_hosts else None
    return pattern is not None and pattern.fullmatch(origin) is not None


def is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def check_origin(request: web.Request, *, app_hosts: bool = False) -> None:
    """403 unless the request's ``Origin`` is ours (a cookie rides along cross-site)."""
    origin = request.headers.get("Origin", "")
    if not origin_allowed(request.app[CONFIG], origin, app_hosts=app_hosts):
        raise HTTPError(
            403,
            "Cross-origin request refused.",
            f"Origin {origin[:100]!r} is not this server's origin"
            f" {access_origin(request.app[CONFIG])!r}.",
        )


def needs_origin_check(request: web.Request) -> bool:
    """A cookie-authenticated WebSocket or state-changing request from a browser. Browsers
    always send ``Origin`` on both, so a request without one is not from a browser (Coder's
    SDK authenticates its WebSockets with the cookie, sending no ``Origin``) and an
    ambient cookie cannot be abused through it."""
    if "Origin" not in request.headers:
        return False
    return is_websocket(request) or request.method not in SAFE_METHODS


async def read_form(request: web.Request, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body, counted as it arrives (413 past
    ``limit`` whether or not a Content-Length was sent)."""
    # No Content-Type at all reads as application/octet-stream: a bare body is accepted.
    if request.content_type not in (
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ):
        raise HTTPError(
            415,
            "Unsupported form encoding.",
            f"Send application/x-www-form-urlencoded, not {request.content_type[:64]}.",
        )
    body = await read_body(request, limit, request.app[CONFIG].body_timeout)
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(400, "Malformed form body.", str(exc)[:200]) from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def csrf_token(request: web.Request) -> str:
    """The CSRF token for forms on this page: the cookie's, or a new one to set."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if re.fullmatch(r"[A-Za-z0-9_-]{32,64}", current):
        return current
    return secrets.token_urlsafe(32)


def set_csrf_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    if request.cookies.get(CSRF_COOKIE) == token:
        return
    response.set_cookie(
        CSRF_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.app[CONFIG].scheme == "https" or _https_access(request),
        path="/",
    )


def _https_access(request: web.Request) -> bool:
    return request.app[CONFIG].resolved_access_url().lower().startswith("https:")


def check_form(request: web.Request, form: dict[str, str]) -> None:
    """Origin and CSRF token of a state-changing form post; 403 on either failing."""
    check_origin(request)
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = form.get(CSRF_FIELD, "")
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise HTTPError(403, "Invalid CSRF token.", "Reload the page and submit the form again.")


def safe_return_to(value: str | None, default: str = "/") -> str:
    """``value`` if it is a path on this server, else ``default`` (no open redirects)."""
    if not value or len(value) > 2048:
        return default
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every HTML page we serve gets the headers."""
    if response.content_type != "text/html" or response.get(PROXIED):
        return
    for name, value in HTML_HEADERS.items():
        response.headers.setdefault(name, value)
