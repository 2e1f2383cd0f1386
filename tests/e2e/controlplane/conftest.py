"""Fixtures for the control plane's API tests: a real server on 127.0.0.1 with two users,
a workspace owned by the first, and helpers for agent- and user-token clients."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import ControlPlane

AGENTS = "/api/v2/workspaceagents"
ME = f"{AGENTS}/me"

MAIN_AGENT: dict[str, Any] = {
    "name": "main",
    "startup_script": "echo hello",
    "startup_script_timeout": 30,
    "directory": "~/project",
    "env": {"GREETING": "hi", "EMPTY": ""},
    "motd_file": "/etc/motd",
    "connection_timeout": 120,
    "login_before_ready": False,
    "apps": [
        {
            "slug": "web",
            "display_name": "Web",
            "url": "http://localhost:8080",
            "icon": "/icon/web.svg",
            "healthcheck": {"url": "http://localhost:8080/healthz", "interval": 5, "threshold": 3},
        },
        {"slug": "term", "command": "htop", "sharing_level": "authenticated"},
    ],
}


@dataclass
class World:
    """One server, two users, one workspace (owned by ``owner``) with one agent."""

    cp: ControlPlane
    owner_token: str
    other_token: str
    agent_id: str
    agent_token: str
    apps: dict[str, str] = field(default_factory=dict)  # slug -> app id

    def user(self, token: str | None = None) -> httpx.AsyncClient:
        return self.cp.http(self.owner_token if token is None else token)

    def agent(self, token: str | None = None) -> httpx.AsyncClient:
        return self.cp.http(self.agent_token if token is None else token)

    async def agent_json(self) -> dict[str, Any]:
        return await self.cp.get_agent_json(self.agent_id, self.owner_token)


async def make_world(cp: ControlPlane, agent: dict[str, Any] | None = None) -> World:
    _, owner_token = await cp.create_user("alice")
    _, other_token = await cp.create_user("bob")
    agents = await cp.create_workspace("alice", "dev", [agent or MAIN_AGENT])
    agent_id, agent_token = next(iter(agents.values()))
    apps = {a.spec.slug: a.id for a in await cp.store.list_apps(agent_id)}
    return World(cp, owner_token, other_token, agent_id, agent_token, apps)


@pytest.fixture
async def world(control_plane: ControlPlane) -> World:
    return await make_world(control_plane)


@pytest.fixture
def world_factory(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
) -> Callable[..., Awaitable[World]]:
    async def make(agent: dict[str, Any] | None = None, **overrides: Any) -> World:
        return await make_world(await make_control_plane(**overrides), agent)

    return make


def node(preferred_derp: int = 999, **extra: Any) -> dict[str, Any]:
    """A tailnet Node as peers send it (docs/protocol.md, "The coordinate socket")."""
    value: dict[str, Any] = {
        "id": secrets.randbits(62),
        "as_of": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "key": f"nodekey:{secrets.token_hex(32)}",
        "disco": f"discokey:{secrets.token_hex(32)}",
        "preferred_derp": preferred_derp,
        "derp_latency": {"999-v4": 0.012},
        "derp_forced_websockets": {},
        "addresses": ["fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4/128"],
        "allowed_ips": ["fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4/128"],
        "endpoints": [],
    }
    value.update(extra)
    return value


def assert_error(
    response: httpx.Response, status: int, message: str | None = None
) -> dict[str, Any]:
    """A Coder-shaped JSON error: ``{message, detail?, validations?}``, never HTML."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], body
    assert set(body) <= {"message", "detail", "validations"}, body
    if "detail" in body:
        assert body["detail"], "empty detail must be omitted"
    if "validations" in body:
        assert body["validations"], "empty validations must be omitted"
        for v in body["validations"]:
            assert set(v) == {"field", "detail"}, v
    if message is not None:
        assert body["message"] == message, body
    return dict(body)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test here that starts a control plane runs on SQLite and on PostgreSQL, unless
    it checks something only SQLite has (``@pytest.mark.sqlite_only``)."""
    if "store_backend" not in metafunc.fixturenames:
        return
    backends = ["sqlite", "postgres"]
    if metafunc.definition.get_closest_marker("sqlite_only") is not None:
        backends = ["sqlite"]
    elif metafunc.definition.get_closest_marker("postgres_only") is not None:
        backends = ["postgres"]
    metafunc.parametrize("store_backend", backends)
