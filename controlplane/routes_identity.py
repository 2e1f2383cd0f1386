"""Instance-identity endpoints (placeholder until identity verification lands)."""

from __future__ import annotations

from aiohttp import web

from controlplane.httpapi import HTTPError


async def not_configured(request: web.Request) -> web.Response:
    raise HTTPError(
        501,
        "Instance identity authentication is not available yet.",
        "This control plane cannot verify cloud instance identities yet; use token auth.",
    )


def setup(app: web.Application) -> None:
    for kind in ("aws", "azure", "google"):
        app.router.add_post(f"/api/v2/workspaceagents/{kind}-instance-identity", not_configured)
