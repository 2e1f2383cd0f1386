"""Two control-plane replicas on one PostgreSQL database, in this process: the agent's
socket is on replica A, the user talks to replica B. Listening-port queries and client
coordinate sockets reach the agent through LISTEN/NOTIFY; a newer agent socket on B takes
over from A; a git-auth credential saved on A wakes a listen on B; a token revoked on B
closes the socket on A at once. Messages over one NOTIFY payload (8,000 bytes) cross in
chunks; past the bus's limit the user gets a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from agent.sdk.extensions import (
    TYPE_LISTENING_PORTS_REQUEST,
    TYPE_PTY_REQUEST,
    TYPE_STREAM_REQUEST,
)
from agent.sdk.pty import ReconnectingPTYInit
from controlplane import gitauth, pgbus, startuplogs
from controlplane.appkeys import COORDINATOR, GITAUTH
from controlplane.store.records import GitAuthProvider
from tests.conftest import ControlPlane, poll_until
from tests.e2e.controlplane.conftest import AGENTS, ME, World, assert_error, make_world, node
from tests.e2e.controlplane.test_coordinate import close_frame_code, connect
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
            assert await close_frame_code(old) == 1001
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
        assert await close_frame_code(agent) == 1008


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


# ------------------------------------------------------------ messages of any size


def many_ports(count: int) -> list[dict[str, Any]]:
    return [
        {"process_name": f"service-{n:05d}", "network": "tcp", "port": 20_000 + n}
        for n in range(count)
    ]


async def answer_ports(agent: Any, ports: list[dict[str, Any]]) -> int:
    """Answer one listening-ports request on the agent's socket; the reply's size."""
    while True:
        request = await agent.recv(10)
        if isinstance(request, dict) and request.get("type") == TYPE_LISTENING_PORTS_REQUEST:
            break
    reply = {
        "type": "listening_ports_response",
        "request_id": request["request_id"],
        "ports": ports,
    }
    await agent.send(reply)
    return len(json.dumps(reply))


async def test_a_60_kb_listening_ports_reply_crosses_replicas_whole(pair: Pair) -> None:
    ports = many_ports(1200)
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)
        answering = asyncio.create_task(answer_ports(agent, ports))
        async with pair.b.user() as client:
            response = await client.get(f"{AGENTS}/{pair.b.agent_id}/listening-ports")
        size = await answering
    assert size > 60_000
    assert response.status_code == 200, response.text[:500]
    got = response.json()["ports"]
    assert [(p["port"], p["process_name"]) for p in got] == [
        (p["port"], p["process_name"]) for p in ports
    ]


async def test_a_reply_over_the_bus_limit_gets_a_clear_error(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgbus, "MAX_MESSAGE_BYTES", 100_000)
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)
        answering = asyncio.create_task(answer_ports(agent, many_ports(3000)))
        with capture_logs() as logs:
            async with pair.b.user() as client:
                response = await client.get(f"{AGENTS}/{pair.b.agent_id}/listening-ports")
        assert await answering > 100_000
        # The agent keeps its socket: only this reply was refused.
        assert pair.a.cp.app[COORDINATOR].is_local(pair.a.agent_id)
    body = assert_error(response, 500)
    assert (
        "over the 100,000-byte limit of messages between control-plane replicas" in (body["detail"])
    ), body
    assert [e for e in logs if e["event"] == "bus.message_too_large"], logs


async def test_a_60_kb_node_crosses_replicas_both_ways(pair: Pair) -> None:
    endpoints = [f"198.51.100.{n % 250}:{40_000 + n}" for n in range(3000)]
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)
        async with client_socket(pair.b) as client:
            mine = node(endpoints=endpoints)
            assert len(json.dumps(mine)) > 60_000
            await client.send(mine)
            got = (await agent.recv_nodes(10))[0]
            assert (got["key"], got["endpoints"]) == (mine["key"], endpoints)
            theirs = node(endpoints=endpoints[::-1])
            await agent.send(theirs)
            got = (await client.recv_nodes(10))[0]
            assert (got["key"], got["endpoints"]) == (theirs["key"], endpoints[::-1])


async def test_many_clients_on_b_reach_an_agent_that_connects_on_a(pair: Pair) -> None:
    """The agent's connect sends it every client's node, across replicas, in batches."""
    endpoints = [f"198.51.100.1:{40_000 + n}" for n in range(400)]  # ~10 KB each
    async with contextlib.AsyncExitStack() as stack:
        keys = set()
        for _ in range(12):
            client = await stack.enter_async_context(client_socket(pair.b))
            mine = node(endpoints=endpoints)
            keys.add(mine["key"])
            await client.send(mine)
        coordinator_b = pair.b.cp.app[COORDINATOR]
        await poll_until(
            lambda: (
                sum(1 for c in coordinator_b._clients.get(pair.b.agent_id, {}).values() if c.node)
                == 12
            ),
            timeout=10,
        )
        async with agent_socket(pair.a) as agent:
            seen: set[str] = set()
            while seen != keys:
                seen |= {n["key"] for n in await agent.recv_nodes(10)}


async def test_a_pty_opened_on_b_with_a_long_command_dials_back_to_b(pair: Pair) -> None:
    command = "echo " + "x" * 6000  # close to the longest request line a server takes
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)
        url = pair.b.cp.url.replace("http", "ws", 1) + f"{AGENTS}/{pair.b.agent_id}/pty"
        query = f"?reconnect=7c3a1f5e-0a57-4b3c-9d2e-000000000001&command={command}"
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                url + query, headers={"Coder-Session-Token": pair.b.owner_token}
            ) as user,
        ):
            request = await agent.recv(10)
            while request.get("type") != TYPE_PTY_REQUEST:
                request = await agent.recv(10)
            assert request["url"] == pair.b.cp.url  # the dial-back goes where the user is
            dial = f"{request['url'].replace('http', 'ws', 1)}{ME}/pty-dial"
            async with session.ws_connect(
                f"{dial}?session={request['session_id']}",
                headers={"Coder-Session-Token": pair.a.agent_token},
            ) as dialled:
                frame = await dialled.receive_bytes(timeout=10)
                split = ReconnectingPTYInit.split_frame(frame)
                assert split is not None
                assert split[0].command == command
                await dialled.send_bytes(b"hello from a")
                assert await user.receive_bytes(timeout=10) == b"hello from a"


async def test_a_stream_refused_on_a_with_a_long_reason_reaches_the_user_on_b(
    pair: Pair,
) -> None:
    reason = "connect: " + "refused, " * 3000  # ~27 KB
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)

        async def refuse() -> None:
            request = await agent.recv(10)
            while request.get("type") != TYPE_STREAM_REQUEST:
                request = await agent.recv(10)
            session = request["session_id"]
            await agent.send({"type": "stream_error", "session_id": session, "error": reason})

        refusing = asyncio.create_task(refuse())
        # The refusal comes before the upgrade: a plain GET shows the error body.
        async with pair.b.user() as client:
            response = await client.get(f"{AGENTS}/{pair.b.agent_id}/stream?target=tcp:8080")
        await refusing
    body = assert_error(response, 502, "Failed to connect to tcp:8080 in the workspace.")
    assert body["detail"] == reason


async def test_an_agent_that_stops_reading_on_a_does_not_hold_up_another_agent(
    pair: Pair,
) -> None:
    """Requests for one agent wait behind that agent's stalled socket, not everyone's."""
    created = await pair.a.cp.create_workspace("alice", "second", [{"name": "main"}])
    other_id, other_token = created["main"]
    healthy_a = World(pair.a.cp, pair.a.owner_token, pair.a.other_token, other_id, other_token)
    healthy_b = World(pair.b.cp, pair.b.owner_token, pair.b.other_token, other_id, other_token)
    endpoints = [f"198.51.100.1:{n}" for n in range(38_000)]  # a node of ~0.9 MB
    async with agent_socket(pair.a) as stalled, agent_socket(healthy_a) as healthy:
        del stalled  # never read: the server's writes to it back up
        await _known_on(pair.b)
        await _known_on(healthy_b)
        peer = pair.a.cp.app[COORDINATOR]._agents[pair.a.agent_id]
        async with client_socket(pair.b) as client:
            for _ in range(16):  # more than the loopback socket buffers hold
                await client.send(node(endpoints=endpoints))
            # A's write to the stalled agent is blocked once its transport buffers data.
            await poll_until(
                lambda: (
                    peer.ws._writer is not None
                    and peer.ws._writer.transport.get_write_buffer_size() > 0
                ),
                timeout=30,
                message="the stalled agent's socket never backed up",
            )
            answering = asyncio.create_task(answer_ports(healthy, many_ports(3)))
            async with healthy_b.user() as user:
                response = await user.get(f"{AGENTS}/{other_id}/listening-ports")
            # The answer came while the other agent's socket was still stuck.
            assert peer.ws._writer.transport.get_write_buffer_size() > 0
            assert response.status_code == 200, response.text
            await answering


async def test_a_node_over_the_bus_limit_is_refused_and_logged_and_the_client_stays(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgbus, "MAX_MESSAGE_BYTES", 50_000)
    endpoints = [f"198.51.100.1:{40_000 + n}" for n in range(3000)]  # ~70 KB
    async with agent_socket(pair.a) as agent:
        await _known_on(pair.b)
        async with client_socket(pair.b) as client:
            with capture_logs() as logs:
                await client.send(node(endpoints=endpoints))
                small = node()
                await client.send(small)  # the next node still goes through
                got = await agent.recv_nodes(10)
            assert [n["key"] for n in got] == [small["key"]]
            assert not client.ws.closed
    refused = [e for e in logs if e["event"] == "bus.message_too_large"]
    assert refused and refused[0]["kind"] == "to_agent", logs
