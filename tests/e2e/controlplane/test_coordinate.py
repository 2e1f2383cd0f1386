"""Both coordinate endpoints (docs/protocol.md, "The coordinate socket"): peers send single Node
objects, the coordinator sends arrays; a second agent socket replaces the first; an agent
of an outdated build is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from agent.sdk.jsonstream import JSONStream
from controlplane.appkeys import COORDINATOR
from controlplane.store.records import AgentSpec
from tests.conftest import poll_until
from tests.e2e.controlplane.conftest import AGENTS, ME, World, node

pytestmark = pytest.mark.e2e

Socket = aiohttp.ClientWebSocketResponse


class Peer:
    """A coordinate socket with a streaming decoder (values may span or share frames)."""

    def __init__(self, ws: Socket) -> None:
        self.ws = ws
        self.stream = JSONStream("test", 1 << 20)
        self.pending: list[Any] = []

    async def send(self, value: object) -> None:
        await self.ws.send_bytes(json.dumps(value).encode())

    async def recv(self, timeout: float = 5.0) -> Any:
        while not self.pending:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                raise ConnectionError(f"socket closed: {self.ws.close_code}")
            assert msg.type == aiohttp.WSMsgType.BINARY, msg  # Coder sends binary frames
            self.pending.extend(self.stream.feed(msg.data))
        return self.pending.pop(0)

    async def recv_nodes(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        value = await self.recv(timeout)
        assert isinstance(value, list), value
        return value


@asynccontextmanager
async def connect(url: str, **kwargs: Any) -> AsyncIterator[Peer]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2), **kwargs) as ws,
    ):
        yield Peer(ws)


async def close_frame_code(peer: Peer, timeout: float = 10.0) -> int:
    """The code in the server's close frame, read until the server closes the socket.
    (Not ``ws.close_code``. A server closing from another task than the reader's closes
    its transport right after the close frame, without waiting for the reply (aiohttp).
    When this client is slow, the frame and the end of the stream arrive together; its
    reply then finds its own transport closed, and it overwrites the code it read with
    1006.)"""
    async with asyncio.timeout(timeout):
        while True:
            msg = await peer.ws.receive()
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return int(msg.data)
            assert msg.type == aiohttp.WSMsgType.BINARY, msg


def as_agent(world: World, token: str | None = None) -> Any:
    return connect(
        f"{world.cp.url}{ME}/coordinate",
        headers={"Coder-Session-Token": token or world.agent_token},
    )


def as_client(world: World) -> Any:
    # Browsers and Coder's SDK authenticate websockets with the cookie.
    return connect(
        f"{world.cp.url}{AGENTS}/{world.agent_id}/coordinate",
        headers={"Cookie": f"coder_session_token={world.owner_token}"},
    )


async def _agent_registered(world: World) -> bool:
    return bool(world.cp.app[COORDINATOR].is_connected(world.agent_id))


async def test_agent_and_client_exchange_nodes(world: World) -> None:
    async with as_agent(world) as agent:
        await poll_until(lambda: _agent_registered(world), timeout=5)
        agent_node = node()
        await agent.send(agent_node)
        await poll_until(lambda: world.cp.app[COORDINATOR].agent_node(world.agent_id), timeout=5)
        async with as_client(world) as client:
            # The client gets the agent's node at once, as an array.
            assert await client.recv_nodes() == [agent_node]
            client_node = node(addresses=["fd7a:115c:a1e0:1::1/128"])
            await client.send(client_node)
            assert await agent.recv_nodes() == [client_node]
            # Agent updates are forwarded to the client as one-element arrays.
            updated = {**agent_node, "preferred_derp": 998}
            await agent.send(updated)
            assert await client.recv_nodes() == [updated]


async def test_client_before_agent_gets_the_agent_node_when_it_arrives(world: World) -> None:
    async with as_client(world) as client:
        client_node = node()
        await client.send(client_node)
        await poll_until(lambda: world.cp.app[COORDINATOR]._clients.get(world.agent_id), timeout=5)
        async with as_agent(world) as agent:
            # On connect the agent receives every registered client node in one array.
            assert await agent.recv_nodes() == [client_node]
            agent_node = node()
            await agent.send(agent_node)
            assert await client.recv_nodes() == [agent_node]


async def test_agent_receives_all_client_nodes_on_reconnect(world: World) -> None:
    async with as_client(world) as c1, as_client(world) as c2:
        n1, n2 = node(), node()
        await c1.send(n1)
        await c2.send(n2)
        async with as_agent(world) as agent:
            first = await agent.recv_nodes()
            while len(first) < 2:  # a node may have arrived after the agent registered
                first = first + await agent.recv_nodes()
            assert sorted(n["id"] for n in first) == sorted([n1["id"], n2["id"]])
        async with as_agent(world) as agent:
            again = await agent.recv_nodes()
            assert sorted(n["id"] for n in again) == sorted([n1["id"], n2["id"]])


async def test_values_split_across_and_sharing_frames(world: World) -> None:
    async with as_agent(world) as agent, as_client(world) as client:
        await poll_until(lambda: _agent_registered(world), timeout=5)
        n1, n2 = node(), node()
        data = json.dumps(n1).encode() + json.dumps(n2).encode()
        await agent.ws.send_bytes(data[:10])
        await agent.ws.send_bytes(data[10:])
        received = [await client.recv_nodes(), await client.recv_nodes()]
        assert received[-1] == [n2]


async def test_second_agent_socket_replaces_the_first(world: World) -> None:
    coordinator = world.cp.app[COORDINATOR]
    async with as_agent(world) as first:
        await poll_until(lambda: _agent_registered(world), timeout=5)
        async with as_agent(world) as second:
            # The first socket is closed by the server ("overwrite").
            msg = await asyncio.wait_for(first.ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert coordinator.connected_agents == 1
            async with as_client(world) as client:
                client_node = node()
                await client.send(client_node)
                assert await second.recv_nodes() == [client_node]
            # Closing the replaced socket did not mark the agent disconnected.
            body = await world.agent_json()
            assert body["status"] == "connected", body


async def test_outdated_build_is_refused_with_403(world: World) -> None:
    workspace = (await world.cp.store.list_workspaces())[0]
    created = await world.cp.store.create_build(workspace.id, [AgentSpec(name="main")])
    async with world.agent() as client:
        response = await client.get(f"{ME}/coordinate")
    assert response.status_code == 403
    assert response.json() == {
        "message": "Agent trying to connect from non-latest build.",
        "detail": "build is outdated",
    }
    async with as_agent(world, created[0].token) as fresh:
        await fresh.send(node())
        await poll_until(
            lambda: world.cp.app[COORDINATOR].is_connected(created[0].record.id), timeout=5
        )


async def test_connected_agent_is_closed_when_its_build_goes_stale(world_factory: Any) -> None:
    w: World = await world_factory(heartbeat_interval=0.2)
    async with as_agent(w) as agent:
        await poll_until(lambda: _agent_registered(w), timeout=5)
        workspace = (await w.cp.store.list_workspaces())[0]
        await w.cp.store.create_build(workspace.id, [AgentSpec(name="main")])
        assert await close_frame_code(agent, timeout=5) == 1001


@pytest.mark.parametrize("garbage", [b"not json", b"[1, 2, 3]", b'{"id": "x"}'])
async def test_invalid_agent_message_closes_with_1007(world: World, garbage: bytes) -> None:
    async with as_agent(world) as agent:
        await agent.ws.send_bytes(garbage)
        msg = await asyncio.wait_for(agent.ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert agent.ws.close_code == 1007
    await poll_until(lambda: _status_disconnected(world), timeout=5)


async def _status_disconnected(world: World) -> bool:
    return bool((await world.agent_json())["status"] == "disconnected")


async def test_get_agent_reports_derp_latency_from_the_agent_node(world: World) -> None:
    async with as_agent(world) as agent:
        latency = {"999-v4": 0.012, "999-v6": 0.02, "7-v4": 0.1}
        await agent.send(node(preferred_derp=999, derp_latency=latency))
        await poll_until(lambda: world.cp.app[COORDINATOR].agent_node(world.agent_id), timeout=5)
        body = await world.agent_json()
        assert body["latency"] == {
            "Coder Embedded Relay": {"latency_ms": 12.0, "preferred": True},
            "Unnamed 7": {"latency_ms": 100.0, "preferred": False},
        }
    # Without a node (the agent left) there is no latency: the field is omitted.
    await poll_until(lambda: not world.cp.app[COORDINATOR].agent_node(world.agent_id), timeout=5)
    assert "latency" not in await world.agent_json()


async def test_a_failing_extension_handler_keeps_the_agent_socket(world: World) -> None:
    coordinator = world.cp.app[COORDINATOR]
    seen: list[str] = []

    async def broken(agent_id: str, message: dict[str, Any]) -> None:
        seen.append(agent_id)
        raise ValueError("handler bug (injected)")

    coordinator.on_agent_message("test-broken", broken)
    async with as_agent(world) as agent, as_client(world) as client:
        await agent.send({"type": "test-broken", "request_id": "1"})
        await poll_until(lambda: seen, timeout=5)
        agent_node = node()
        await agent.send(agent_node)
        assert await client.recv_nodes() == [agent_node]
        assert coordinator.is_connected(world.agent_id)


async def test_invalid_client_message_closes_only_the_client(world: World) -> None:
    async with as_agent(world) as agent, as_client(world) as client:
        await poll_until(lambda: _agent_registered(world), timeout=5)
        await client.ws.send_bytes(b'{"key": 1}')
        msg = await asyncio.wait_for(client.ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert client.ws.close_code == 1007
        # The agent's socket is untouched.
        async with as_client(world) as other:
            n = node()
            await other.send(n)
            assert await agent.recv_nodes() == [n]
