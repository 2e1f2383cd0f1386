"""The real daemon against the real control plane: status, lifecycle, version, stats."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e


async def _status(cp: ControlPlane, agent_id: str, token: str) -> dict[str, Any]:
    return await cp.get_agent_json(agent_id, token)


async def test_agent_status_goes_connecting_connected_disconnected(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Any
) -> None:
    """connecting before the daemon runs, connected while it runs, disconnected after kill."""
    _, user_token = await control_plane.create_user("alice")
    agents = await control_plane.create_workspace(
        "alice", "dev", [{"name": "main", "directory": "~"}]
    )
    agent_id, agent_token = agents["main"]

    before = await _status(control_plane, agent_id, user_token)
    assert before["status"] == "connecting"
    assert before["lifecycle_state"] == "created"

    agent: AgentProcess = await start_agent(
        agent_env(control_plane.url, agent_token, tmp_path / "logs")
    )
    body = await poll_until(
        lambda: _connected(control_plane, agent_id, user_token),
        timeout=15,
        message="agent never connected",
    )
    assert body["version"].startswith("v")
    assert body["expanded_directory"].startswith("/")
    assert "first_connected_at" in body and "last_connected_at" in body

    agent.kill()
    await agent.proc.wait()
    gone = await poll_until(
        lambda: _disconnected(control_plane, agent_id, user_token),
        timeout=10,
        message="agent never became disconnected",
    )
    assert "disconnected_at" in gone


async def _connected(cp: ControlPlane, agent_id: str, token: str) -> dict[str, Any] | None:
    body = await _status(cp, agent_id, token)
    return body if body["status"] == "connected" else None


async def _disconnected(cp: ControlPlane, agent_id: str, token: str) -> dict[str, Any] | None:
    body = await _status(cp, agent_id, token)
    return body if body["status"] == "disconnected" else None


async def test_agent_token_is_never_logged(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Any
) -> None:
    _, user_token = await control_plane.create_user("bob")
    agents = await control_plane.create_workspace("bob", "dev")
    agent_id, token = agents["main"]
    log_dir = tmp_path / "logs"
    agent = await start_agent(agent_env(control_plane.url, token, log_dir))
    await poll_until(lambda: _connected(control_plane, agent_id, user_token), timeout=15)
    assert await agent.terminate() == 0
    assert token not in "\n".join(agent.raw_lines)
    log_file = log_dir / "coder-agent.log"
    assert token not in log_file.read_text()
    assert (log_file.stat().st_mode & 0o777) == 0o600
