"""The dashboard at ``/``: a first snapshot in the page, then live Server-Sent Events as
the real agent connects, reports, opens a port and goes away."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AgentProcess, ControlPlane, agent_env
from tests.e2e.web.conftest import WebClient, user_with_password

pytestmark = pytest.mark.e2e


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    name, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif not line and name:
            yield name, json.loads(data)
            name, data = "", ""


async def next_snapshot(
    events: AsyncIterator[tuple[str, Any]],
    check: Callable[[dict[str, Any]], bool],
    logs: list[str] | None = None,
) -> dict[str, Any]:
    """The next snapshot passing ``check``; log lines seen meanwhile go to ``logs``."""

    async def find() -> dict[str, Any]:
        async for name, value in events:
            if name == "logs" and logs is not None:
                logs.extend(line["output"] for line in value["lines"])
            if name == "snapshot" and check(value):
                return dict(value)
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), 30)


def agent_of(view: dict[str, Any]) -> dict[str, Any]:
    return dict(view["workspaces"][0]["agents"][0])


async def test_dashboard_renders_and_follows_the_agent(
    control_plane: ControlPlane,
    web_client: Callable[[], Awaitable[WebClient]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    tmp_path: Path,
) -> None:
    await user_with_password(control_plane, "alice")
    agents = await control_plane.create_workspace(
        "alice",
        "dev",
        [
            {
                "name": "main",
                "startup_script": "echo started-ok",
                "apps": [{"slug": "web", "display_name": "Web", "url": "http://127.0.0.1:9/"}],
            }
        ],
    )
    _, agent_token = agents["main"]
    client = await web_client()
    anonymous = await client.http.get("/", headers={"Accept": "text/html"})
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login?return_to=/"
    await client.sign_in("alice")
    page = await client.http.get("/")
    assert page.status_code == 200 and "/static/dashboard.js" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    initial = re.search(r'<script type="application/json" id="initial">(.*?)</script>', page.text)
    assert initial
    view = json.loads(initial.group(1))
    first = agent_of(view)
    assert first["status"] == "connecting" and first["lifecycle"] == "created"
    assert first["apps"] == [
        {"slug": "web", "name": "Web", "health": "disabled", "href": "/@alice/dev.main/apps/web/"}
    ]
    assert first["terminal"] == "/@alice/dev.main/terminal"

    async with client.http.stream("GET", "/dashboard/events", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
        await next_snapshot(events, lambda v: agent_of(v)["status"] == "connecting")
        agent = await start_agent(agent_env(control_plane.url, agent_token, tmp_path / "logs"))
        logs: list[str] = []
        ready = await next_snapshot(
            events,
            lambda v: agent_of(v)["status"] == "connected" and agent_of(v)["lifecycle"] == "ready",
            logs,
        )
        assert agent_of(ready)["version"] and agent_of(ready)["last_connected_at"]

        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            opened = await next_snapshot(
                events, lambda v: any(p["port"] == port for p in agent_of(v)["ports"]), logs
            )
            link = next(p for p in agent_of(opened)["ports"] if p["port"] == port)
            assert link["href"] == f"/@alice/dev.main/ports/{port}/"
        # The startup script's output reached the page too (it is sent after its rows land).
        assert "started-ok" in logs

        await agent.terminate()
        await next_snapshot(events, lambda v: agent_of(v)["status"] == "disconnected")


async def test_events_need_a_session(control_plane: ControlPlane) -> None:
    async with control_plane.http() as client:
        response = await client.get("/dashboard/events")
    assert response.status_code == 401
