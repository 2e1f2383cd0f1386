"""``/@<owner>/<workspace>.<agent>/terminal``: the browser terminal (xterm.js on ``/pty``).

The page is static apart from the agent's ``/pty`` URL; ``terminal.js`` keeps the
session's reconnect id in the page URL, so a reload re-attaches and replays the scrollback.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from controlplane.webui.pages import esc, page_user, render
from controlplane.webui.resolve import owned_agent_by_name
from controlplane.webui.security import csrf_token, set_csrf_cookie

ROUTE: Final = "/@{owner}/{workspace_agent}/terminal"


async def show(request: web.Request) -> web.Response:
    user = await page_user(request)
    agent, workspace = await owned_agent_by_name(
        request.app, user, request.match_info["owner"], request.match_info["workspace_agent"]
    )
    csrf = csrf_token(request)
    pty = f"/api/v2/workspaceagents/{agent.id}/pty"
    body = (
        '<div id="term-state" role="status" data-state="connecting">connecting…</div>'
        f'<div id="term" data-pty="{esc(pty)}"></div>'
    )
    response = render(
        f"{workspace.name}.{agent.name} terminal",
        body,
        user=user,
        csrf=csrf,
        scripts=["/static/terminal.js"],
        head='\n<link rel="stylesheet" href="/static/terminal.css">',
        body_attrs=' class="terminal"',
    )
    set_csrf_cookie(request, response, csrf)
    return response


def setup(app: web.Application) -> None:
    app.router.add_get(ROUTE, show)
