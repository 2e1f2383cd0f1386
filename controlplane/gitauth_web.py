"""``/gitauth/{provider}``: where the URL from ``GET /me/gitauth`` sends the user.

This control plane has no OAuth client (it runs without internet access), so the page lets
the signed-in user store a personal access token (or a username and password) for the
provider. Saving it wakes every ``gitauth?listen`` request waiting for that user at once.
"""

from __future__ import annotations

import html
import urllib.parse
from typing import Final

from aiohttp import web

from controlplane.appkeys import GITAUTH, STORE
from controlplane.auth import authenticate_user
from controlplane.gitauth import credential_for
from controlplane.httpapi import HTTPError
from controlplane.store.records import GitAuthProvider

MAX_FORM_BYTES: Final = 16 * 1024

PAGE: Final = """<!doctype html>
<html><head><meta charset="utf-8"><title>Git authentication: {name}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto}}
input{{width:100%;padding:.4rem;margin:.2rem 0 1rem}}</style></head>
<body><h1>Git authentication</h1>
<p>Provider <b>{name}</b> (URLs matching <code>{regex}</code>) for user <b>{user}</b>.</p>
<p>{status}</p>
<form method="post">
<label>Access token <input name="token" type="password" autocomplete="off"></label>
<p>or</p>
<label>Username <input name="username" autocomplete="off"></label>
<label>Password <input name="password" type="password" autocomplete="off"></label>
<button type="submit">Save</button>
</form></body></html>
"""


async def _provider(request: web.Request) -> GitAuthProvider:
    wanted = request.match_info["provider"]
    for provider in await request.app[STORE].list_gitauth_providers():
        if provider.id == wanted:
            return provider
    raise HTTPError(404, f'Git auth provider "{wanted[:64]}" not found.')


def _page(provider: GitAuthProvider, user: str, status: str) -> web.Response:
    body = PAGE.format(
        name=html.escape(provider.id),
        regex=html.escape(provider.regex),
        user=html.escape(user),
        status=html.escape(status),
    )
    return web.Response(text=body, content_type="text/html", charset="utf-8")


async def _read_form(request: web.Request) -> dict[str, str]:
    """The url-encoded form, capped on the bytes actually read: a chunked body declares no
    length, so checking ``Content-Length`` alone would let it through unbounded."""
    too_large = HTTPError(
        413, "Request body is too large.", f"The limit is {MAX_FORM_BYTES} bytes."
    )
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise too_large
    if request.content_type not in (
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ):
        raise HTTPError(
            415,
            "Unsupported form encoding.",
            f"Send application/x-www-form-urlencoded, not {request.content_type[:64]}.",
        )
    body = bytearray()
    async for chunk in request.content.iter_chunked(4096):
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise too_large
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=16
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(400, "Malformed form body.", str(exc)) from None
    return dict(pairs)


async def show(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    provider = await _provider(request)
    link = await request.app[STORE].get_gitauth_link(provider.id, user.id)
    status = "A credential is stored." if link else "No credential is stored yet."
    return _page(provider, user.name, status)


async def save(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    provider = await _provider(request)
    form = await _read_form(request)
    token = form.get("token", "").strip()
    username = form.get("username", "").strip()
    password = form.get("password", "")
    if token:
        username, password = credential_for(provider.type, token)
    if not username and not password:
        raise HTTPError(
            400,
            "Validation failed.",
            validations=[("token", "give a token, or a username and password")],
        )
    await request.app[STORE].set_gitauth_link(provider.id, user.id, username, password)
    request.app[GITAUTH].notify(provider.id, user.id)
    return _page(provider, user.name, "Saved. You can return to your terminal.")


def setup(app: web.Application) -> None:
    app.router.add_get("/gitauth/{provider}", show)
    app.router.add_post("/gitauth/{provider}", save)
