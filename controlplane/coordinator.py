"""In-memory tailnet coordinator with wsagent's extension channel (docs/protocol.md, "The
coordinate socket").

Agents and clients send single Node objects; the coordinator sends arrays of Nodes. A
second agent socket for the same agent replaces the first. Objects with a ``type`` field
from an agent are extension replies, dispatched to handlers registered by type; the
server sends extension requests with :meth:`Coordinator.send_to_agent`.

With several replicas (docs/scaling.md) a :class:`Bus` links the coordinators: the
replica holding an agent's socket claims it, requests for that agent from other replicas
reach it through the bus (and the agent's replies go back to the asking replica), agent
nodes are broadcast to the replicas' clients, and a newer socket on one replica closes an
older one on another. Without a bus everything stays in this process, as before.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog
from aiohttp import WSMsgType, web

from agent.sdk.errors import DecodeError, WsagentError
from agent.sdk.jsonstream import JSONStream
from agent.sdk.tailnet import Node

log = structlog.get_logger()

WRITE_TIMEOUT: Final = 5.0
MAX_VALUE_BYTES: Final = 1 << 20
ORIGIN_TTL: Final = 60.0  # seconds a routed request's reply may take
MAX_ORIGINS: Final = 10_000
# Clients' nodes sent to an agent at once (on its connect) go in arrays of about this size:
# one array of thousands of nodes would pass the 1 MiB an agent reads in one value.
NODE_BATCH_BYTES: Final = 256 * 1024

ExtensionHandler = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class Bus(Protocol):
    """How coordinators on several replicas reach each other (``controlplane.pgbus``)."""

    async def claimed(self, agent_id: str, peer_id: str, since: float) -> None: ...
    async def released(self, agent_id: str, peer_id: str) -> None: ...
    async def to_agent(self, replica: str, agent_id: str, payload: object) -> None: ...
    async def reply(self, replica: str, agent_id: str, value: dict[str, Any]) -> None: ...
    async def agent_node(self, agent_id: str, node: dict[str, Any]) -> None: ...
    async def want_node(self, replica: str, agent_id: str) -> None: ...
    async def close(self) -> None: ...


class AgentNotConnected(WsagentError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id} is not connected to this server")
        self.agent_id = agent_id


class TooLarge(AgentNotConnected):
    """A message for an agent, or its reply, is over what the bus carries between replicas
    (``controlplane.pgbus.MAX_MESSAGE_BYTES``): the agent is there but cannot be reached
    with it."""

    def __init__(self, size: int, limit: int, what: str = "the message") -> None:
        WsagentError.__init__(
            self,
            f"{what} is {size:,} bytes, over the {limit:,}-byte limit"
            " of messages between control-plane replicas",
        )
        self.agent_id = ""
        self.size = size
        self.limit = limit


@dataclass(eq=False)
class Peer:
    ws: web.WebSocketResponse
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    node: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # When it opened (wall clock, comparable across replicas): the newest socket wins.
    since: float = field(default_factory=time.time)

    async def send(self, value: object) -> None:
        data = json.dumps(value, separators=(",", ":")).encode()
        async with self.lock:
            await asyncio.wait_for(self.ws.send_bytes(data), WRITE_TIMEOUT)


class Coordinator:
    def __init__(self) -> None:
        self._agents: dict[str, Peer] = {}
        self._agent_nodes: dict[str, dict[str, Any]] = {}
        self._clients: dict[str, dict[str, Peer]] = {}
        self._handlers: dict[str, ExtensionHandler] = {}
        self.bus: Bus | None = None
        # Called when a token of an agent was revoked on any replica: its sockets' refresh
        # checks now (controlplane/refresher.py).
        self.on_recheck: Callable[[str], None] | None = None
        # agent id -> (replica, peer id) of its socket on another replica.
        self._remote: dict[str, tuple[str, str]] = {}
        # request/session id -> (replica that asked, expiry): where the agent's reply goes.
        self._origins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    # -------------------------------------------------------------- queries

    def is_connected(self, agent_id: str) -> bool:
        """The agent's socket is on this replica or, as far as the bus said, on another."""
        return agent_id in self._agents or agent_id in self._remote

    def is_local(self, agent_id: str) -> bool:
        return agent_id in self._agents

    def is_current(self, agent_id: str, peer: Peer) -> bool:
        return self._agents.get(agent_id) is peer

    def agent_node(self, agent_id: str) -> dict[str, Any] | None:
        return self._agent_nodes.get(agent_id)

    @property
    def connected_agents(self) -> int:
        return len(self._agents)

    def on_agent_message(self, type_name: str, handler: ExtensionHandler) -> None:
        """Receive extension objects of ``type_name`` that agents send back."""
        self._handlers[type_name] = handler

    async def send_to_agent(self, agent_id: str, payload: object) -> None:
        peer = self._agents.get(agent_id)
        if peer is None:
            remote = self._remote.get(agent_id)
            if remote is None or self.bus is None:
                raise AgentNotConnected(agent_id)
            await self.bus.to_agent(remote[0], agent_id, payload)
            return
        try:
            await peer.send(payload)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise AgentNotConnected(agent_id) from exc

    # -------------------------------------------------------------- from the bus

    async def deliver_to_agent(self, agent_id: str, payload: object, origin: str) -> None:
        """A request from another replica for an agent whose socket is here."""
        peer = self._agents.get(agent_id)
        if peer is None:
            log.info("coordinator.route_missed", agent_id=agent_id, origin=origin)
            return
        correlation = _correlation(payload)
        if correlation:
            now = time.monotonic()
            self._origins[correlation] = (origin, now + ORIGIN_TTL)
            while len(self._origins) > MAX_ORIGINS or (
                self._origins and next(iter(self._origins.values()))[1] < now
            ):
                self._origins.popitem(last=False)
        try:
            await peer.send(payload)
        except (ConnectionError, TimeoutError, RuntimeError):
            log.info("coordinator.agent_send_failed", agent_id=agent_id)

    async def deliver_from_agent(self, agent_id: str, value: dict[str, Any]) -> None:
        """An agent's reply, routed back here from the replica holding its socket."""
        await self._dispatch(agent_id, value)

    async def deliver_agent_node(self, agent_id: str, node: dict[str, Any]) -> None:
        if agent_id in self._agents:
            return  # this replica holds the socket: its node is already current here
        self._agent_nodes[agent_id] = node
        await self._to_clients(agent_id, node)

    async def deliver_claim(self, agent_id: str, replica: str, peer_id: str, since: float) -> None:
        """Another replica took the agent's socket: close ours, send it our clients.

        Two sockets opened at nearly the same time on two replicas: the newer one wins on
        both (ours stays if it opened later; its own claim closes the other)."""
        local = self._agents.get(agent_id)
        if local is not None and local.since > since:
            return
        self._remote[agent_id] = (replica, peer_id)
        previous = self._agents.pop(agent_id, None)
        if previous is not None:
            log.info("coordinator.agent_taken_over", agent_id=agent_id, replica=replica)
            await previous.ws.close(code=1001, message=b"replaced by a newer agent connection")
        nodes = [c.node for c in self._clients.get(agent_id, {}).values() if c.node]
        if self.bus is not None:
            for batch in node_batches(nodes):
                await self.bus.to_agent(replica, agent_id, batch)

    def deliver_release(self, agent_id: str, peer_id: str) -> None:
        remote = self._remote.get(agent_id)
        if remote is not None and remote[1] == peer_id:
            del self._remote[agent_id]
            self._agent_nodes.pop(agent_id, None)

    async def deliver_want_node(self, agent_id: str) -> None:
        node = self._agent_nodes.get(agent_id)
        if node is not None and agent_id in self._agents and self.bus is not None:
            await self.bus.agent_node(agent_id, node)

    def recheck(self, agent_id: str) -> None:
        """A token of this agent was revoked somewhere: its sockets check theirs now."""
        if self.on_recheck is not None:
            self.on_recheck(agent_id)

    # -------------------------------------------------------------- agents

    async def serve_agent(self, agent_id: str, ws: web.WebSocketResponse) -> Peer:
        """Register the socket and start the exchange; returns the peer for ``run_agent``."""
        peer = Peer(ws)
        previous = self._agents.get(agent_id)
        self._agents[agent_id] = peer
        self._remote.pop(agent_id, None)
        if previous is not None:
            log.info("coordinator.agent_replaced", agent_id=agent_id)
            await previous.ws.close(code=1001, message=b"replaced by a newer agent connection")
        clients = [c.node for c in self._clients.get(agent_id, {}).values() if c.node]
        for batch in node_batches(clients):
            await peer.send(batch)
        if self.bus is not None:
            try:
                await self.bus.claimed(agent_id, peer.id, peer.since)
            except Exception as exc:  # the socket works here even if the claim is late
                log.warning("coordinator.claim_failed", agent_id=agent_id, error=str(exc))
        return peer

    async def run_agent(self, agent_id: str, peer: Peer) -> None:
        """Read the agent's socket until it closes."""
        stream = JSONStream("agent coordinate", MAX_VALUE_BYTES)
        try:
            async for msg in peer.ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                for value in stream.feed(data):
                    await self._from_agent(agent_id, value)
        except DecodeError as exc:
            log.warning("coordinator.agent_protocol_error", agent_id=agent_id, error=str(exc))
            await peer.ws.close(code=1007, message=b"invalid coordinate message")
        finally:
            if self._agents.get(agent_id) is peer:
                del self._agents[agent_id]
                self._agent_nodes.pop(agent_id, None)
            if self.bus is not None:
                try:
                    await self.bus.released(agent_id, peer.id)
                except Exception as exc:
                    log.warning("coordinator.release_failed", agent_id=agent_id, error=str(exc))

    async def _from_agent(self, agent_id: str, value: object) -> None:
        if isinstance(value, dict) and "type" in value:
            correlation = _correlation(value)
            origin = self._origins.pop(correlation, None) if correlation else None
            if origin is not None and self.bus is not None:
                try:
                    await self.bus.reply(origin[0], agent_id, value)
                except Exception as exc:  # the asker times out; the agent keeps its socket
                    log.warning("coordinator.reply_failed", agent_id=agent_id, error=str(exc))
                return
            await self._dispatch(agent_id, value)
            return
        node = Node.from_json(value, "agent node")  # validates; raises DecodeError
        del node
        assert isinstance(value, dict)
        self._agent_nodes[agent_id] = value
        await self._to_clients(agent_id, value)
        if self.bus is not None:
            try:
                await self.bus.agent_node(agent_id, value)
            except Exception as exc:
                log.warning("coordinator.node_broadcast_failed", agent_id=agent_id, error=str(exc))

    async def _to_clients(self, agent_id: str, node: dict[str, Any]) -> None:
        for client in list(self._clients.get(agent_id, {}).values()):
            try:
                await client.send([node])
            except (ConnectionError, TimeoutError, RuntimeError):
                await client.ws.close()

    async def _dispatch(self, agent_id: str, value: dict[str, Any]) -> None:
        kind = str(value.get("type"))
        handler = self._handlers.get(kind)
        if handler is None:
            log.warning("coordinator.unknown_agent_message", agent_id=agent_id, type=kind[:64])
            return
        try:
            result = handler(agent_id, value)
            if result is not None:
                await result
        except Exception:
            # One bad extension reply must not cost the agent its coordinate socket.
            log.exception("coordinator.extension_failed", agent_id=agent_id, type=kind[:64])

    # -------------------------------------------------------------- clients

    async def serve_client(self, agent_id: str, ws: web.WebSocketResponse) -> None:
        peer = Peer(ws)
        self._clients.setdefault(agent_id, {})[peer.id] = peer
        stream = JSONStream("client coordinate", MAX_VALUE_BYTES)
        try:
            node = self._agent_nodes.get(agent_id)
            if node is not None:
                await peer.send([node])
            elif agent_id in self._remote and self.bus is not None:
                try:
                    await self.bus.want_node(self._remote[agent_id][0], agent_id)
                except Exception as exc:  # the node comes with the agent's next change
                    log.warning("coordinator.want_node_failed", agent_id=agent_id, error=str(exc))
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                for value in stream.feed(data):
                    Node.from_json(value, "client node")
                    assert isinstance(value, dict)
                    peer.node = value
                    try:
                        await self.send_to_agent(agent_id, [value])
                    except AgentNotConnected:
                        # The agent's socket is going away; its next socket gets this
                        # node on connect. The client stays.
                        log.info("coordinator.agent_send_failed", agent_id=agent_id)
        except DecodeError as exc:
            log.warning("coordinator.client_protocol_error", agent_id=agent_id, error=str(exc))
            await ws.close(code=1007, message=b"invalid coordinate message")
        finally:
            clients = self._clients.get(agent_id, {})
            clients.pop(peer.id, None)
            if not clients:
                self._clients.pop(agent_id, None)

    async def close(self) -> None:
        for peer in list(self._agents.values()):
            await peer.ws.close(code=1001, message=b"server shutting down")
        for clients in list(self._clients.values()):
            for peer in list(clients.values()):
                await peer.ws.close(code=1001, message=b"server shutting down")


def node_batches(
    nodes: list[dict[str, Any]], limit: int = NODE_BATCH_BYTES
) -> list[list[dict[str, Any]]]:
    """``nodes`` in order, as arrays whose JSON stays under ``limit`` bytes where it can (a
    node bigger than that goes alone). Pure."""
    batches: list[list[dict[str, Any]]] = []
    size = limit
    for node in nodes:
        cost = len(json.dumps(node, separators=(",", ":")).encode()) + 1
        if size + cost > limit:
            batches.append([])
            size = 2  # the brackets
        batches[-1].append(node)
        size += cost
    return batches


def _correlation(payload: object) -> str:
    """The id an extension request and its reply share (ports: request_id; streams:
    session_id), or ""."""
    if not isinstance(payload, dict):
        return ""
    for key in ("request_id", "session_id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return ""
