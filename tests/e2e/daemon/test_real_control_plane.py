"""The happy paths against the real control plane: start-up fields as stored, status
through connect, server restart and shutdown. Faults the real server cannot produce are in
test_faults.py against the fake."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.conftest import ControlPlane, poll_until
from tests.e2e.daemon.conftest import SpawnDaemon
from tests.e2e.daemon.test_connect import SEMVER, saw_refused_retry

pytestmark = pytest.mark.e2e


async def workspace(cp: ControlPlane, directory: str) -> tuple[str, str, str]:
    _, user_token = await cp.create_user("alice")
    agents = await cp.create_workspace("alice", "dev", [{"name": "main", "directory": directory}])
    agent_id, agent_token = agents["main"]
    return agent_id, agent_token, user_token


async def status_is(
    cp: ControlPlane, agent_id: str, token: str, status: str
) -> dict[str, Any] | None:
    body = await cp.get_agent_json(agent_id, token)
    return body if body["status"] == status else None


@pytest.mark.parametrize("directory", ["", "~", "$HOME"])
async def test_stored_version_and_expanded_directory(
    control_plane: ControlPlane, spawn_daemon: SpawnDaemon, directory: str
) -> None:
    """The server stores a v-semver version and the expanded directory."""
    agent_id, agent_token, user_token = await workspace(control_plane, directory)
    daemon = await spawn_daemon(control_plane.url, agent_token)
    body = await poll_until(
        lambda: status_is(control_plane, agent_id, user_token, "connected"), timeout=10
    )
    assert SEMVER.match(body["version"])
    assert body.get("expanded_directory", "") == ("" if directory == "" else str(daemon.home))
    assert body.get("directory", "") == directory


async def test_restart_of_the_server_then_sigterm(
    control_plane: ControlPlane, spawn_daemon: SpawnDaemon
) -> None:
    """Server down (the daemon's retries refused): the daemon is connected again within
    15 s of its return; then SIGTERM exits 0 and the server sees the socket close
    (disconnected)."""
    agent_id, agent_token, user_token = await workspace(control_plane, "~")
    daemon = await spawn_daemon(control_plane.url, agent_token)
    first = await poll_until(
        lambda: status_is(control_plane, agent_id, user_token, "connected"), timeout=10
    )

    await control_plane.stop()
    await daemon.wait_for(lambda: saw_refused_retry(daemon), 10.0, "refused reconnection attempt")
    await control_plane.start()
    again = await poll_until(
        lambda: _reconnected(control_plane, agent_id, user_token, first["last_connected_at"]),
        timeout=15,
        message="no reconnection within 15 s of the server coming back",
    )
    assert again["status"] == "connected"

    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    gone = await poll_until(
        lambda: status_is(control_plane, agent_id, user_token, "disconnected"), timeout=5
    )
    assert "disconnected_at" in gone


async def _reconnected(
    cp: ControlPlane, agent_id: str, token: str, before: str
) -> dict[str, Any] | None:
    body = await cp.get_agent_json(agent_id, token)
    return body if body["status"] == "connected" and body["last_connected_at"] > before else None
