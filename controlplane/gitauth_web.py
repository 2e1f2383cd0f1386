"""``/gitauth/{provider}``: where the URL from ``GET /me/gitauth`` sends the user.

This control plane has no OAuth client (it runs without internet access), so the page lets
the signed-in user store a personal access token (or a username and password) for the
provider. Saving it wakes every ``gitauth?listen`` request waiting for that user at once.
A browser that is not signed in is sent through ``/login`` and back here.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from aiohttp import web

from controlplane.appkeys import GITAUTH, STORE
from controlplane.auth import authenticate_user, request_token, token_from_cookie
from controlplane.gitauth import credential_for
from controlplane.httpapi import HTTPError
from controlplane.store.records import GitAuthProvider, UserRecord
from controlplane.webui.pages import LoginRequired, esc, render, wants_html
from controlplane.webui.security import check_form, csrf_token, read_form, set_csrf_cookie

FORM: Final = """<section class="card narrow"><h1>Git authentication</h1>
<p>Provider <b>{name}</b> (URLs matching <code>{regex}</code>) for user <b>{user}</b>.</p>
<p class="status" role="status">{status}</p>
<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}">
<label>Access token <input name="token" type="password" autocomplete="off"></label>
<p>or</p>
<label>Username <input name="username" autocomplete="off"></label>
<label>Password <input name="password" type="password" autocomplete="off"></label>
<button type="submit">Save</button>
</form></section>"""


async def _provider(request: web.Request) -> GitAuthProvider:
    wanted = request.match_info["provider"]
    for provider in await request.app[STORE].list_gitauth_providers():
        if provider.id == wanted:
            return provider
    raise HTTPError(404, f'Git auth provider "{wanted[:64]}" not found.')


async def _user(request: web.Request) -> UserRecord:
    if wants_html(request) and not request_token(request):
        raise LoginRequired(request.path_qs)
    return await authenticate_user(request)


def _page(
    request: web.Request, provider: GitAuthProvider, user: UserRecord, status: str
) -> web.Response:
    csrf = csrf_token(request)
    body = FORM.format(
        name=esc(provider.id),
        regex=esc(provider.regex),
        user=esc(user.name),
        status=esc(status),
        action=esc(f"/gitauth/{quote(provider.id)}"),
        csrf=esc(csrf),
    )
    response = render(f"Git authentication: {provider.id}", body, user=user, csrf=csrf)
    set_csrf_cookie(request, response, csrf)
    return response


async def show(request: web.Request) -> web.Response:
    user = await _user(request)
    provider = await _provider(request)
    link = await request.app[STORE].get_gitauth_link(provider.id, user.id)
    status = "A credential is stored." if link else "No credential is stored yet."
    return _page(request, provider, user, status)


async def save(request: web.Request) -> web.Response:
    user = await authenticate_user(request)
    provider = await _provider(request)
    form = await read_form(request)
    if token_from_cookie(request):
        check_form(request, form)
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
    return _page(request, provider, user, "Saved. You can return to your terminal.")


def setup(app: web.Application) -> None:
    app.router.add_get("/gitauth/{provider}", show)
    app.router.add_post("/gitauth/{provider}", save)
