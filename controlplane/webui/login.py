"""``/login`` and ``/logout``: a browser session in the ``coder_session_token`` cookie.

Signing in (with a password, or with a session token for users who have none) mints a
new session token with an expiry, so signing out revokes exactly that one and never the
CLI's. Failures are limited per user name and per client address; the limit is logged.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Final

import structlog
from aiohttp import web

from controlplane.appkeys import CONFIG, STORE
from controlplane.auth import SESSION_COOKIE, request_token
from controlplane.passwords import DUMMY_HASH, PasswordError, verify_password
from controlplane.store.records import UserRecord
from controlplane.tokens import hash_token, well_formed
from controlplane.webui.pages import esc, redirect, render
from controlplane.webui.ratelimit import FailureLimiter
from controlplane.webui.security import (
    CSRF_FIELD,
    check_form,
    csrf_token,
    read_form,
    safe_return_to,
    set_csrf_cookie,
)
from controlplane.webui.sockets import USER_SOCKETS

log = structlog.get_logger()

USER_FAILURES: Final = 5  # per user name per window
ADDRESS_FAILURES: Final = 20  # per client address per window
FAILURE_WINDOW: Final = 300.0
# Each scrypt check holds 128 MiB for a few hundred ms: two at a time at most.
CONCURRENT_CHECKS: Final = 2

LIMITER: web.AppKey[tuple[FailureLimiter, FailureLimiter]] = web.AppKey("login_limiter")
CHECKS: web.AppKey[asyncio.Semaphore] = web.AppKey("login_checks")

FORM: Final = """<section class="card narrow"><h1>Sign in</h1>{error}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="return_to" value="{return_to}">
<label>User name <input name="username" autocomplete="username" value="{username}"
 autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password">
</label>
<details{open_token}><summary>No password? Use a session token</summary>
<label>Session token <input name="token" type="password" autocomplete="off"></label>
<p class="hint">From <code>wsagent admin user token NAME</code>.</p></details>
<button type="submit">Sign in</button>
</form></section>"""


def _form(
    request: web.Request,
    *,
    return_to: str,
    username: str = "",
    error: str = "",
    token_open: bool = False,
    status: int = 200,
) -> web.Response:
    csrf = csrf_token(request)
    body = FORM.format(
        error=f'<p class="error" role="alert">{esc(error)}</p>' if error else "",
        csrf=esc(csrf),
        return_to=esc(return_to),
        username=esc(username),
        open_token=" open" if token_open else "",
    )
    response = render("Sign in", body, status=status)
    set_csrf_cookie(request, response, csrf)
    return response


async def show_login(request: web.Request) -> web.Response:
    return_to = safe_return_to(request.query.get("return_to"))
    token = request_token(request)
    if well_formed(token) and await request.app[STORE].user_by_token(token) is not None:
        return redirect(return_to)
    return _form(request, return_to=return_to)


async def _check_password(request: web.Request, username: str, password: str) -> UserRecord | None:
    store = request.app[STORE]
    user = await store.get_user_by_name(username) if username else None
    stored = await store.password_hash(user.id) if user is not None else ""
    async with request.app[CHECKS]:
        try:
            ok = await asyncio.to_thread(verify_password, password, stored or DUMMY_HASH)
        except PasswordError:
            log.warning("login.bad_password_hash", user=username)
            ok = False
    return user if ok and stored and user is not None else None


async def _check_token(request: web.Request, username: str, token: str) -> UserRecord | None:
    if not well_formed(token):
        return None
    user = await request.app[STORE].user_by_token(token)
    if user is None or (username and username != user.name):
        return None
    return user


async def login(request: web.Request) -> web.Response:
    form = await read_form(request)
    check_form(request, form)
    return_to = safe_return_to(form.get("return_to"))
    username = form.get("username", "").strip()[:64]
    password = form.get("password", "")
    token = form.get("token", "").strip()
    address = request.remote or "unknown"
    by_user, by_address = request.app[LIMITER]
    now = time.monotonic()
    wait = max(
        by_address.retry_after(address, now),
        by_user.retry_after(username, now) if username else 0.0,
    )
    if wait > 0:
        log.warning("login.rate_limited", user=username, address=address, retry_after=int(wait))
        response = _form(
            request,
            return_to=return_to,
            username=username,
            error=f"Too many failed attempts. Try again in {int(wait) + 1} seconds.",
            status=429,
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if token:
        user = await _check_token(request, username, token)
    else:
        user = await _check_password(request, username, password)
    if user is None:
        by_address.failed(address, now)
        if username:
            by_user.failed(username, now)
        log.info("login.failed", user=username, address=address, method=_method(token))
        return _form(
            request,
            return_to=return_to,
            username=username,
            error="Wrong user name, password or token.",
            token_open=bool(token),
            status=401,
        )
    by_user.succeeded(user.name)
    ttl = request.app[CONFIG].session_ttl
    session = await request.app[STORE].create_user_token(user.id, ttl)
    log.info("login.succeeded", user=user.name, address=address, method=_method(token))
    response = redirect(return_to)
    # Expires beside Max-Age: the same expiry for clients that only read the older one.
    expires = format_datetime(datetime.now(UTC) + timedelta(seconds=ttl), usegmt=True)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=int(ttl),
        expires=expires,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.app[CONFIG].resolved_access_url().lower().startswith("https:"),
    )
    return response


def _method(token: str) -> str:
    return "token" if token else "password"


async def show_logout(request: web.Request) -> web.Response:
    csrf = csrf_token(request)
    body = (
        '<section class="card narrow"><h1>Sign out</h1>'
        '<form method="post" action="/logout">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{esc(csrf)}">'
        '<button type="submit">Sign out</button></form></section>'
    )
    response = render("Sign out", body)
    set_csrf_cookie(request, response, csrf)
    return response


async def logout(request: web.Request) -> web.Response:
    form = await read_form(request)
    check_form(request, form)
    token = request.cookies.get(SESSION_COOKIE, "")
    if well_formed(token):
        user = await request.app[STORE].user_by_token(token)
        await request.app[STORE].revoke_user_token(token)
        await request.app[USER_SOCKETS].close_tokens({hash_token(token)})
        log.info("login.signed_out", user=user.name if user else "")
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def setup(app: web.Application) -> None:
    app[LIMITER] = (
        FailureLimiter(USER_FAILURES, FAILURE_WINDOW),
        FailureLimiter(ADDRESS_FAILURES, FAILURE_WINDOW),
    )
    app[CHECKS] = asyncio.Semaphore(CONCURRENT_CHECKS)
    app.router.add_get("/login", show_login)
    app.router.add_post("/login", login)
    app.router.add_get("/logout", show_logout)
    app.router.add_post("/logout", logout)
