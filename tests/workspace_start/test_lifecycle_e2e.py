"""The real daemon runs the startup script against the real control plane (§5.3)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e


async def _workspace(cp: ControlPlane, name: str, **agent: Any) -> tuple[str, str, str]:
    _, user_token = await cp.create_user(name)
    agents = await cp.create_workspace(name, "dev", [{"name": "main", **agent}])
    agent_id, agent_token = agents["main"]
    return agent_id, agent_token, user_token


async def _lifecycle(cp: ControlPlane, agent_id: str, token: str) -> str:
    body = await cp.get_agent_json(agent_id, token)
    return str(body["lifecycle_state"])


async def _wait_state(cp: ControlPlane, agent_id: str, token: str, state: str, timeout: float = 15) -> None:
    async def reached() -> bool:
        return await _lifecycle(cp, agent_id, token) == state

    await poll_until(reached, timeout=timeout, message=f"lifecycle never became {state}")


def _server_states(logs: list[dict[str, Any]], agent_id: str) -> list[str]:
    return [e["state"] for e in logs if e.get("event") == "agent.lifecycle" and e.get("agent_id") == agent_id]


async def _start(start_agent: Any, cp: ControlPlane, token: str, tmp_path: Path, **env: str) -> AgentProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    agent: AgentProcess = await start_agent(
        agent_env(cp.url, token, tmp_path / "logs", HOME=str(home), **env)
    )
    return agent


async def test_true_goes_starting_then_ready(control_plane: ControlPlane, start_agent: Any, tmp_path: Path) -> None:
    """`true` → the server receives starting, then ready."""
    agent_id, token, user_token = await _workspace(control_plane, "alice", startup_script="true")
    assert await _lifecycle(control_plane, agent_id, user_token) == "created"
    with capture_logs() as logs:
        agent = await _start(start_agent, control_plane, token, tmp_path)
        await _wait_state(control_plane, agent_id, user_token, "ready")
    assert _server_states(logs, agent_id) == ["starting", "ready"]
    await agent.wait_for_event("startup.script_exited", exit_code=0)
