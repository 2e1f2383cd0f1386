"""Two control-plane replicas on one PostgreSQL database, in this process: the agent's
socket is on replica A, the user talks to replica B. Listening-port queries and client
coordinate sockets reach the agent through LISTEN/NOTIFY; a newer agent socket on B takes
over from A; a git-auth credential saved on A wakes a listen on B; a token revoked on B
closes the socket on A at once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from agent.sdk.extensions import TYPE_LISTENING_PORTS_REQUEST
from controlplane import gitauth, startuplogs
from controlplane.appkeys import COORDINATOR, GITAUTH
from controlplane.store.records import GitAuthProvider
from tests.conftest import ControlPlane, poll_until
from tests.e2e.controlplane.conftest import AGENTS, ME, World, make_world, node
from tests.e2e.controlplane.test_coordinate import connect
from tests.e2e.controlplane.test_startup_logs import lines

pytestmark = [pytest.mark.postgres_only, pytest.mark.e2e]


@dataclass
class Pair:
    a: World  # the agent's socket goes here
    b: World  # the same users and agent, seen through replica B


@pytest.fixture
async def pair(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    make_database: Callable[[], Awaitable[str]],
) -> Pair:
    url = await make_database()
    # A long refresh interval: anything faster than it comes from the bus.
    a = await make_control_plane(database_url=url, heartbeat_interval=30.0)
    b = await make_control_plane(database_url=url, heartbeat_interval=30.0)
    world = await make_world(a)
    for cp in (a, b):
        cp.config.replica_url = cp.url
    other = World(b, world.owner_token, world.other_token, world.agent_id, world.agent_token)
    return Pair(world, other)


def agent_socket(world: World) -> Any:
    return connect(
        f"{world.cp.url}{ME}/coordinate", headers={"Coder-Session-Token": world.agent_token}
    )


def client_socket(world: World) -> Any:
    return connect(
        f"{world.cp.url}{AGENTS}/{world.agent_id}/coordinate",
        headers={"Cookie": f"coder_session_token={world.owner_token}"},
    )


async def closed_code(peer: Any, timeout: float = 10.0) -> int | None:
    """Read until the server closes the socket; its close code."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await peer.recv(max(0.01, deadline - loop.time()))
        except ConnectionError:
            code: int | None = peer.ws.close_code
            return code


async def _known_on(world: World) -> None:
    await poll_until(
        lambda: world.cp.app[COORDINATOR].is_connected(world.agent_id),
        timeout=10,
        message="replica B never learned where the agent's socket is",
    )


async def test_listening_ports_asked_on_b_are_answered_by_the_agent_on_a(pair: Pair) -> None:
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)

        async def answer() -> None:
            request = await agent.recv(10)
            assert request["type"] == TYPE_LISTENING_PORTS_REQUEST
            await agent.send(
                {
                    "type": "listening_ports_response",
                    "request_id": request["request_id"],
                    "ports": [{"process_name": "web", "network": "tcp", "port": 8081}],
                }
            )

        answering = asyncio.create_task(answer())
        async with pair.b.user() as client:
            response = await client.get(f"{AGENTS}/{pair.b.agent_id}/listening-ports")
        await answering
    assert response.status_code == 200, response.text
    assert [p["port"] for p in response.json()["ports"]] == [8081]
    assert not pair.b.cp.app[COORDINATOR].is_local(pair.b.agent_id)


async def test_a_client_socket_on_b_exchanges_nodes_with_the_agent_on_a(pair: Pair) -> None:
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)
        async with client_socket(pair.b) as client:
            mine = node()
            await client.send(mine)
            assert (await agent.recv_nodes(10))[0]["key"] == mine["key"]
            theirs = node()
            await agent.send(theirs)
            assert (await client.recv_nodes(10))[0]["key"] == theirs["key"]


async def test_a_newer_socket_on_b_takes_over_from_a(pair: Pair) -> None:
    async with agent_socket(pair.a) as old:
        await _known_on(pair.b)
        async with agent_socket(pair.b) as new:
            assert await closed_code(old) == 1001
            assert pair.b.cp.app[COORDINATOR].is_local(pair.b.agent_id)
            await poll_until(
                lambda: not pair.a.cp.app[COORDINATOR].is_local(pair.a.agent_id), timeout=5
            )
            assert not new.ws.closed
            # A still routes to the agent, now through B.
            assert pair.a.cp.app[COORDINATOR].is_connected(pair.a.agent_id)


async def test_a_credential_saved_on_a_wakes_a_listen_on_b(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gitauth, "RECHECK_SECONDS", 60.0)  # only a wake-up can answer in time
    store_a = pair.a.cp.store
    await store_a.upsert_gitauth_provider(GitAuthProvider("github", r"github\.com", "github"))
    alice = await store_a.get_user_by_name("alice")
    async with pair.b.agent() as client:
        request = asyncio.create_task(
            client.get(f"{ME}/gitauth?url=https://github.com/x/y&listen", timeout=30)
        )
        await poll_until(lambda: pair.b.cp.app[GITAUTH].waiting == 1, timeout=10)
        await store_a.set_gitauth_link("github", alice.id, "fresh", "")
        response = await asyncio.wait_for(request, 10)
    assert response.status_code == 200
    assert response.json()["username"] == "fresh"


async def test_a_token_revoked_on_b_closes_the_socket_on_a_at_once(pair: Pair) -> None:
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)
        assert await pair.b.cp.store.revoke_agent_tokens(pair.b.agent_id) == 1
        # Refreshes are 30 s apart here: only the revocation's notification is this fast.
        assert await closed_code(agent) == 1008


async def test_lines_appended_on_a_reach_a_follower_on_b_at_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(startuplogs, "RECHECK_INTERVAL", 60.0)  # only a wake-up is this fast
    url = pair.b.cp.url.replace("http", "ws", 1) + f"{AGENTS}/{pair.b.agent_id}/startup-logs"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url + "?follow", headers={"Coder-Session-Token": pair.b.owner_token}
        ) as ws,
    ):
        assert json.loads(await ws.receive_str(timeout=10)) == []  # nothing yet
        async with pair.a.agent() as client:
            response = await client.patch(f"{ME}/startup-logs", json=lines("from a"))
            assert response.status_code == 200, response.text
        message = await ws.receive_str(timeout=10)
    assert [e["output"] for e in json.loads(message)] == ["from a"]
