"""The real ``wsagent agent`` against the real server: what it reports is stored and
visible through ``GET /workspaceagents/{id}``. (Status connecting -> connected ->
disconnected is in tests/e2e/test_agent_control_plane.py; every lifecycle outcome in
tests/e2e/workspace_start/test_lifecycle_e2e.py; stats from terminal traffic in
tests/e2e/terminals/test_e2e.py.)"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_lifecycle_version_and_app_health_reach_the_api(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    _, user_token = await control_plane.create_user("alice")
    dead = f"http://127.0.0.1:{_closed_port()}/"
    agents = await control_plane.create_workspace(
        "alice",
        "dev",
        [
            {
                "name": "main",
                "startup_script": "echo started",
                "startup_script_timeout": 30,
                "directory": str(tmp_path),
                "apps": [
                    {
                        # The control plane's own /healthz is a real HTTP app that answers 200.
                        "slug": "up",
                        "url": control_plane.url,
                        "healthcheck": {
                            "url": f"{control_plane.url}/healthz",
                            "interval": 1,
                            "threshold": 1,
                        },
                    },
                    {"slug": "down", "healthcheck": {"url": dead, "interval": 1, "threshold": 1}},
                    {"slug": "plain", "url": "http://localhost:1"},
                ],
            }
        ],
    )
    agent_id, agent_token = agents["main"]
    await start_agent(agent_env(control_plane.url, agent_token, tmp_path / "logs"))

    async def reported() -> dict[str, Any] | None:
        body = await control_plane.get_agent_json(agent_id, user_token)
        healths = {a["slug"]: a["health"] for a in body["apps"]}
        done = body["lifecycle_state"] == "ready" and healths == {
            "up": "healthy",
            "down": "unhealthy",
            "plain": "disabled",
        }
        return body if done else None

    body = await poll_until(reported, timeout=20, message="lifecycle/app health never reported")
    assert body["status"] == "connected"
    assert body["version"].startswith("v")
    assert body["expanded_directory"] == str(tmp_path)
    record = await control_plane.store.get_agent(agent_id)
    assert (record.lifecycle_state, record.version) == ("ready", body["version"])
