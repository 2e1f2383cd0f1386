"""What the route modules share, so that no route module imports another: the agent id in
a path, the "agent must be connected" check, and an app record as its wire model."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from aiohttp import web

from agent.sdk.models import Healthcheck, WorkspaceApp
from controlplane.appkeys import CONFIG, COORDINATOR
from controlplane.httpapi import HTTPError
from controlplane.status import agent_status
from controlplane.store.records import AgentRecord, AppRecord

# Only the form ids are stored and printed in: other spellings (upper case, ``urn:uuid:``,
# no hyphens, braces) would otherwise name the same agent under several URLs.
_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse_agent_id(request: web.Request) -> str:
    raw = request.match_info["agent_id"]
    if not _CANONICAL_UUID.fullmatch(raw):
        raise HTTPError(
            400,
            f'Invalid UUID "{raw[:64]}".',
            "expected the lower-case 36-character form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            [("workspaceagent", "invalid UUID")],
        )
    return raw


async def require_connected(request: web.Request, agent: AgentRecord) -> None:
    status, _ = agent_status(agent, datetime.now(UTC), request.app[CONFIG].inactive_timeout)
    if status != "connected" or not request.app[COORDINATOR].is_connected(agent.id):
        shown = status if status != "connected" else "disconnected"
        raise HTTPError(400, f'Agent state is "{shown}", it must be in the "connected" state.')


def app_model(app: AppRecord) -> WorkspaceApp:
    spec = app.spec
    return WorkspaceApp(
        id=app.id,
        url=spec.url,
        external=spec.external,
        slug=spec.slug,
        display_name=spec.display_name or spec.slug,
        command=spec.command,
        icon=spec.icon,
        subdomain=spec.subdomain,
        sharing_level=spec.sharing_level,
        healthcheck=Healthcheck(
            spec.healthcheck_url, spec.healthcheck_interval, spec.healthcheck_threshold
        ),
        health=app.health,
    )
