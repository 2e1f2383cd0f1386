"""Server-rendered HTML: one layout, escaped values, no template engine."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Final
from urllib.parse import quote

from aiohttp import web

from controlplane.appkeys import STORE
from controlplane.auth import request_token
from controlplane.httpapi import Handler, HTTPError
from controlplane.store.records import UserRecord
from controlplane.tokens import well_formed

esc = html.escape

LAYOUT: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · wsagent</title>
<link rel="stylesheet" href="/static/app.css">{head}
</head><body{body_attrs}>
<header><a class="brand" href="/">wsagent</a>{nav}</header>
<main>{main}</main>{scripts}
</body></html>
"""


def logout_form(csrf: str) -> str:
    return (
        '<form class="logout" method="post" action="/logout">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        '<button type="submit">Sign out</button></form>'
    )


def render(
    title: str,
    main: str,
    *,
    user: UserRecord | None = None,
    csrf: str = "",
    scripts: Sequence[str] = (),
    head: str = "",
    body_attrs: str = "",
    status: int = 200,
) -> web.Response:
    nav = ""
    if user is not None:
        nav = f'<span class="who">{esc(user.name)}</span>{logout_form(csrf)}'
    tags = "".join(f'\n<script src="{esc(src)}"></script>' for src in scripts)
    text = LAYOUT.format(
        title=esc(title),
        head=head,
        body_attrs=body_attrs,
        nav=nav,
        main=main,
        scripts=tags,
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def wants_html(request: web.Request) -> bool:
    """A browser navigating (not an API client): it asks for HTML first."""
    accept = request.headers.get("Accept", "")
    return "text/html" in accept.split(",", 1)[0]


def redirect(location: str) -> web.Response:
    """303 See Other: after a form post the browser follows with a GET."""
    return web.Response(status=303, headers={"Location": location})


class LoginRequired(Exception):
    """Raised by :func:`page_user`; ``page_middleware`` turns it into the redirect."""

    def __init__(self, return_to: str) -> None:
        super().__init__(return_to)
        self.location = f"/login?return_to={quote(return_to, safe='/')}"


def error_page(status: int, title: str, detail: str) -> web.Response:
    body = (
        f'<section class="card narrow"><h1>{esc(title)}</h1>'
        f'<p class="error" role="alert">{esc(detail)}</p>'
        '<p><a href="/">Back to your workspaces</a></p></section>'
    )
    return render(title, body, status=status)


@web.middleware
async def page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pages send a browser without a session to ``/login``; and under ``/@`` (terminals,
    apps, ports) a browser gets its errors as a page, API clients as Coder's JSON."""
    try:
        return await handler(request)
    except LoginRequired as exc:
        return redirect(exc.location)
    except HTTPError as exc:
        if not (request.path.startswith("/@") and wants_html(request)):
            raise
        return error_page(exc.status, exc.message, exc.detail or "")


async def page_user(request: web.Request) -> UserRecord:
    """The signed-in user of a page; otherwise off to ``/login`` and back here after."""
    token = request_token(request)
    user = await request.app[STORE].user_by_token(token) if well_formed(token) else None
    if user is None:
        raise LoginRequired(request.path_qs)
    return user
