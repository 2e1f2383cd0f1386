"""The authorisation matrix: owner, another user (404), no token (401), an agent token on
user endpoints (401), a user token on agent endpoints (401); tokens by header, cookie and
query parameter (docs/protocol.md, "Conventions")."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import pytest

from controlplane.store.records import GitAuthProvider
from tests.e2e.controlplane.conftest import AGENTS, ME, World, assert_error

pytestmark = pytest.mark.e2e

AGENT_ENDPOINTS: list[tuple[str, str, Any, int]] = [
    ("GET", "/metadata", None, 200),
    ("POST", "/startup", {"version": "v1.0.0", "expanded_directory": "/w"}, 200),
    ("POST", "/report-lifecycle", {"state": "ready"}, 204),
    ("POST", "/app-health", {"Healths": {"<web>": "healthy"}}, 200),
    ("POST", "/report-stats", {"rx_bytes": 1}, 200),
    ("GET", "/gitsshkey", None, 200),
    ("GET", "/gitauth?url=https://github.com/a/b", None, 200),
    ("GET", "/coordinate", None, 101),
]
# The owner's answer: 400 where the agent is not connected yet (a state error, not auth).
USER_ENDPOINTS: list[tuple[str, int]] = [
    ("", 200),
    ("/connection", 200),
    ("/coordinate", 101),
    ("/listening-ports", 400),
    ("/pty?reconnect=6a1c2bdb-8a3b-4d4e-9b8f-6f1a4c1f2f3e", 400),
]
AGENT_IDS = [e[1] for e in AGENT_ENDPOINTS]
USER_IDS = [e[0] or "/" for e in USER_ENDPOINTS]


async def _call(world: World, method: str, path: str, body: Any, *, via: str, token: str) -> int:
    """Make the request with the token in a header, cookie or query; returns the status
    (101 for a WebSocket handshake that succeeded)."""
    url = f"{world.cp.url}{path}"
    headers: dict[str, str] = {}
    if via == "header" and token:
        headers["Coder-Session-Token"] = token
    elif via == "cookie" and token:
        headers["Cookie"] = f"coder_session_token={token}"
    elif via == "query" and token:
        url += ("&" if "?" in url else "?") + f"coder_session_token={token}"
    if path.endswith("/coordinate") or "/pty" in path:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, headers=headers) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
    if isinstance(body, dict) and "Healths" in body:
        body = {"Healths": {world.apps["web"]: "healthy"}}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(method, url, json=body, headers=headers)
    if response.status_code >= 400:
        assert_error(response, response.status_code)
    return response.status_code


@pytest.fixture
async def gworld(world: World) -> World:
    await world.cp.store.upsert_gitauth_provider(
        GitAuthProvider("github", r"github\.com", "github")
    )
    return world


@pytest.mark.parametrize("via", ["header", "cookie", "query"])
@pytest.mark.parametrize(("method", "path", "body", "ok"), AGENT_ENDPOINTS, ids=AGENT_IDS)
async def test_agent_endpoints_accept_the_agent_token(
    gworld: World, via: str, method: str, path: str, body: Any, ok: int
) -> None:
    assert await _call(gworld, method, ME + path, body, via=via, token=gworld.agent_token) == ok


@pytest.mark.parametrize(("method", "path", "body", "ok"), AGENT_ENDPOINTS, ids=AGENT_IDS)
async def test_agent_endpoints_refuse_no_token_and_user_tokens(
    gworld: World, method: str, path: str, body: Any, ok: int
) -> None:
    assert await _call(gworld, method, ME + path, body, via="header", token="") == 401
    assert (
        await _call(gworld, method, ME + path, body, via="header", token=gworld.owner_token) == 401
    )
    assert (
        await _call(gworld, method, ME + path, body, via="cookie", token=gworld.owner_token) == 401
    )
    assert await _call(gworld, method, ME + path, body, via="header", token="short") == 401


async def test_agent_auth_error_messages(world: World) -> None:
    async with world.agent("") as client:
        assert_error(
            await client.get(f"{ME}/metadata"),
            401,
            'Cookie "coder_session_token" must be provided.',
        )
    async with world.agent("not a token!") as client:
        assert_error(await client.get(f"{ME}/metadata"), 401, "Workspace agent token invalid.")
    async with world.agent(world.owner_token) as client:
        assert_error(await client.get(f"{ME}/metadata"), 401, "Workspace agent not authorized.")


@pytest.mark.parametrize("via", ["header", "cookie", "query"])
@pytest.mark.parametrize(("suffix", "ok"), USER_ENDPOINTS, ids=USER_IDS)
async def test_user_endpoints_let_the_owner_in(
    world: World, via: str, suffix: str, ok: int
) -> None:
    path = f"{AGENTS}/{world.agent_id}{suffix}"
    assert await _call(world, "GET", path, None, via=via, token=world.owner_token) == ok


@pytest.mark.parametrize(("suffix", "ok"), USER_ENDPOINTS, ids=USER_IDS)
async def test_user_endpoints_refuse_others(world: World, suffix: str, ok: int) -> None:
    path = f"{AGENTS}/{world.agent_id}{suffix}"
    assert await _call(world, "GET", path, None, via="header", token=world.other_token) == 404
    assert await _call(world, "GET", path, None, via="cookie", token=world.other_token) == 404
    assert await _call(world, "GET", path, None, via="header", token="") == 401
    assert await _call(world, "GET", path, None, via="header", token=world.agent_token) == 401
    assert await _call(world, "GET", path, None, via="query", token=world.agent_token) == 401


@pytest.mark.parametrize("path", ["/api/v2/users/me", "/api/v2/workspaces"])
async def test_user_helpers_need_a_user_token(world: World, path: str) -> None:
    assert await _call(world, "GET", path, None, via="header", token="") == 401
    assert await _call(world, "GET", path, None, via="header", token=world.agent_token) == 401
    assert await _call(world, "GET", path, None, via="query", token=world.owner_token) == 200


async def test_another_users_404_does_not_reveal_existence(world: World) -> None:
    async with world.user(world.other_token) as client:
        real = await client.get(f"{AGENTS}/{world.agent_id}")
        missing = await client.get(f"{AGENTS}/6a1c2bdb-8a3b-4d4e-9b8f-6f1a4c1f2f3e")
    assert real.status_code == missing.status_code == 404
    assert real.json() == missing.json()


async def test_expired_user_token_is_401(world: World) -> None:
    alice = await world.cp.store.get_user_by_name("alice")
    token = await world.cp.store.create_user_token(alice.id, ttl_seconds=0.001)
    async with world.user(token) as client:
        assert_error(await client.get(f"{AGENTS}/{world.agent_id}"), 401)


async def test_rotated_agent_token_is_401_and_the_new_one_works(world: World) -> None:
    new = await world.cp.store.rotate_agent_token(world.agent_id)
    async with world.agent() as client:
        assert_error(await client.get(f"{ME}/metadata"), 401, "Workspace agent not authorized.")
    async with world.agent(new) as client:
        assert (await client.get(f"{ME}/metadata")).status_code == 200
