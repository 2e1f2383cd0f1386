"""``GET /workspaceagents/{id}``, ``/connection`` and ``/listening-ports`` (docs/protocol.md,
"Agent status" and "Listening ports"), with status computed as Coder does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from controlplane.config import DEFAULT_TROUBLESHOOTING_URL
from tests.conftest import poll_until
from tests.e2e.controlplane.conftest import AGENTS, ME, World, assert_error

pytestmark = pytest.mark.e2e

REQUIRED = {
    "id",
    "created_at",
    "updated_at",
    "status",
    "lifecycle_state",
    "name",
    "resource_id",
    "architecture",
    "environment_variables",
    "operating_system",
    "version",
    "apps",
    "connection_timeout_seconds",
    "troubleshooting_url",
    "startup_script_timeout_seconds",
    "login_before_ready",
    "startup_logs_length",
    "startup_logs_overflowed",
    "shutdown_script_timeout_seconds",
}
OMITEMPTY = {
    "shutdown_script",
    "metadata",
    "first_connected_at",
    "last_connected_at",
    "disconnected_at",
    "instance_id",
    "startup_script",
    "directory",
    "expanded_directory",
    "latency",
}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@asynccontextmanager
async def agent_socket(
    world: World, token: str | None = None
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{world.cp.url}{ME}/coordinate",
            headers={"Coder-Session-Token": token or world.agent_token},
            timeout=aiohttp.ClientWSTimeout(ws_close=2),
        ) as ws,
    ):
        yield ws


async def _status_is(world: World, status: str) -> dict[str, Any] | None:
    body = await world.agent_json()
    return body if body["status"] == status else None


async def test_agent_fields_before_any_connection(world: World) -> None:
    body = await world.agent_json()
    assert REQUIRED <= set(body) <= REQUIRED | OMITEMPTY, set(body) ^ REQUIRED
    assert not {"first_connected_at", "last_connected_at", "disconnected_at"} & set(body)
    assert not {"instance_id", "expanded_directory", "latency"} & set(body)
    assert body["id"] == world.agent_id
    assert body["name"] == "main"
    assert body["status"] == "connecting"
    assert body["lifecycle_state"] == "created"
    assert body["startup_script"] == "echo hello"
    assert body["startup_script_timeout_seconds"] == 30
    assert body["directory"] == "~/project"
    assert body["environment_variables"] == {"GREETING": "hi", "EMPTY": ""}
    assert body["connection_timeout_seconds"] == 120
    assert body["login_before_ready"] is False
    assert body["version"] == ""
    assert (body["architecture"], body["operating_system"]) == ("amd64", "linux")
    assert body["troubleshooting_url"] == DEFAULT_TROUBLESHOOTING_URL  # the fallback
    assert {a["slug"] for a in body["apps"]} == {"web", "term"}
    assert _time(body["created_at"]).tzinfo is not None
    assert body["created_at"].endswith("Z")


async def test_minimal_agent_omits_empty_fields(world_factory: Any) -> None:
    w: World = await world_factory(
        {"name": "bare", "troubleshooting_url": "https://help.example.com/x"}
    )
    body = await w.agent_json()
    assert not {"startup_script", "directory", "instance_id"} & set(body)
    assert body["apps"] == []
    assert body["environment_variables"] == {}
    assert body["troubleshooting_url"] == "https://help.example.com/x"  # the template's own


async def test_status_timeout_before_first_connection(world_factory: Any) -> None:
    w: World = await world_factory({"name": "slow", "connection_timeout": 1})
    assert (await w.agent_json())["status"] == "connecting"
    body = await poll_until(lambda: _status_is(w, "timeout"), timeout=5)
    assert body["connection_timeout_seconds"] == 1
    # A zero timeout never times out.
    z: World = await world_factory({"name": "patient", "connection_timeout": 0})
    created = _time((await z.agent_json())["created_at"])
    assert datetime.now(UTC) - created >= timedelta(seconds=0)
    assert (await z.agent_json())["status"] == "connecting"


async def test_status_connected_then_disconnected_then_connected(world: World) -> None:
    async with agent_socket(world):
        body = await poll_until(lambda: _status_is(world, "connected"), timeout=5)
        assert "first_connected_at" in body and "last_connected_at" in body
        assert "disconnected_at" not in body
        first = body["first_connected_at"]
    gone = await poll_until(lambda: _status_is(world, "disconnected"), timeout=5)
    assert _time(gone["disconnected_at"]) >= _time(gone["last_connected_at"])
    async with agent_socket(world):
        again = await poll_until(lambda: _status_is(world, "connected"), timeout=5)
        assert again["first_connected_at"] == first  # kept from the first connection
        assert _time(again["last_connected_at"]) > _time(first)


async def test_last_connected_at_is_refreshed_while_the_socket_is_open(world_factory: Any) -> None:
    w: World = await world_factory(heartbeat_interval=0.2)  # inactive after 0.4 s without refresh

    async def refreshed() -> dict[str, Any] | None:
        body = await w.agent_json()
        if "last_connected_at" not in body:
            return None
        span = _time(body["last_connected_at"]) - _time(body["first_connected_at"])
        # Well past the inactivity timeout since the first connection, and connected.
        return body if span > timedelta(seconds=1) and body["status"] == "connected" else None

    async with agent_socket(w):
        await poll_until(refreshed, timeout=10, message="last_connected_at never refreshed")


async def test_stale_connection_reports_disconnected_at_last_connected(world: World) -> None:
    """A socket that stopped refreshing without a recorded close (a crashed replica)."""
    long_ago = datetime.now(UTC) - timedelta(seconds=30)
    await world.cp.store.agent_connected(world.agent_id, long_ago)
    body = await world.agent_json()
    assert body["status"] == "disconnected"
    assert body["disconnected_at"] == body["last_connected_at"]


async def test_connection_info_has_tailscale_cased_derp_map(world: World) -> None:
    async with world.user() as client:
        response = await client.get(f"{AGENTS}/{world.agent_id}/connection")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"derp_map"}
    regions = body["derp_map"]["Regions"]
    region = next(iter(regions.values()))
    assert region["Nodes"][0]["HostName"] == "127.0.0.1"
    assert region["Nodes"][0]["DERPPort"] == world.cp.config.port
    async with world.agent() as client:
        metadata = (await client.get(f"{ME}/metadata")).json()
    assert metadata["derpmap"] == body["derp_map"]


async def test_listening_ports_needs_a_connected_agent(world: World) -> None:
    async with world.user() as client:
        response = await client.get(f"{AGENTS}/{world.agent_id}/listening-ports")
    assert_error(response, 400, 'Agent state is "connecting", it must be in the "connected" state.')


async def test_users_me_and_workspaces(world: World) -> None:
    async with world.user() as client:
        me = (await client.get("/api/v2/users/me")).json()
        workspaces = (await client.get("/api/v2/workspaces")).json()
    assert me["username"] == "alice"
    assert workspaces["count"] == 1
    assert workspaces["workspaces"][0]["agents"][0]["id"] == world.agent_id
    async with world.user(world.other_token) as client:
        assert (await client.get("/api/v2/workspaces")).json() == {"workspaces": [], "count": 0}


async def test_a_failed_refresh_does_not_stop_the_refreshes(
    world_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection in the store (not in the handler under test): one heartbeat write
    fails, the next ones still land and the agent stays connected."""
    # 0.3 s, not less: "connected" needs a refresh within twice the interval, and on
    # PostgreSQL each refresh cycle is a few round trips on a shared machine.
    w: World = await world_factory(heartbeat_interval=0.3)
    real = w.cp.store.agent_heartbeats  # the sockets' refreshes are written in batches
    calls: list[datetime] = []

    async def flaky(agent_ids: list[str], now: datetime) -> None:
        calls.append(now)
        if len(calls) == 1:
            raise OSError("disk I/O error (injected)")
        await real(agent_ids, now)

    monkeypatch.setattr(w.cp.store, "agent_heartbeats", flaky)
    async with agent_socket(w):
        await poll_until(lambda: len(calls) >= 4, timeout=5, message="refreshes stopped")
        body = await poll_until(lambda: _status_is(w, "connected"), timeout=5)
    assert _time(body["last_connected_at"]) >= calls[1]  # written after the failure


async def test_healthz_and_buildinfo_need_no_token(world: World) -> None:
    async with world.user("") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        info = (await client.get("/api/v2/buildinfo")).json()
    assert info["version"].startswith("v")
