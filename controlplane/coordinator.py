"""In-memory tailnet coordinator with wsagent's extension channel (docs/protocol.md, "The
coordinate socket").

Agents and clients send single Node objects; the coordinator sends arrays of Nodes. A
second agent socket for the same agent replaces the first. Objects with a ``type`` field
from an agent are extension replies, dispatched to handlers registered by type; the
server sends extension requests with :meth:`Coordinator.send_to_agent`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from aiohttp import WSMsgType, web

from agent.sdk.errors import DecodeError
from agent.sdk.jsonstream import JSONStream
from agent.sdk.tailnet import Node

log = structlog.get_logger()

WRITE_TIMEOUT: Final = 5.0
MAX_VALUE_BYTES: Final = 1 << 20

ExtensionHandler = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class AgentNotConnected(Exception):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id} is not connected to this server")
        self.agent_id = agent_id


@dataclass(eq=False)
class Peer:
    ws: web.WebSocketResponse
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    node: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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

    # -------------------------------------------------------------- queries

    def is_connected(self, agent_id: str) -> bool:
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

    async def send_to_agent(self, agent_id: str, payload: dict[str, Any]) -> None:
        peer = self._agents.get(agent_id)
        if peer is None:
            raise AgentNotConnected(agent_id)
        try:
            await peer.send(payload)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise AgentNotConnected(agent_id) from exc

    # -------------------------------------------------------------- agents

    async def serve_agent(self, agent_id: str, ws: web.WebSocketResponse) -> Peer:
        """Register the socket and start the exchange; returns the peer for ``run_agent``."""
        peer = Peer(ws)
        previous = self._agents.get(agent_id)
        self._agents[agent_id] = peer
        if previous is not None:
            log.info("coordinator.agent_replaced", agent_id=agent_id)
            await previous.ws.close(code=1001, message=b"replaced by a newer agent connection")
        clients = [c.node for c in self._clients.get(agent_id, {}).values() if c.node]
        if clients:
            await peer.send(clients)
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

    async def _from_agent(self, agent_id: str, value: object) -> None:
        if isinstance(value, dict) and "type" in value:
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
            return
        node = Node.from_json(value, "agent node")  # validates; raises DecodeError
        del node
        assert isinstance(value, dict)
        self._agent_nodes[agent_id] = value
        for client in list(self._clients.get(agent_id, {}).values()):
            try:
                await client.send([value])
            except (ConnectionError, TimeoutError, RuntimeError):
                await client.ws.close()

    # -------------------------------------------------------------- clients

    async def serve_client(self, agent_id: str, ws: web.WebSocketResponse) -> None:
        peer = Peer(ws)
        self._clients.setdefault(agent_id, {})[peer.id] = peer
        stream = JSONStream("client coordinate", MAX_VALUE_BYTES)
        try:
            node = self._agent_nodes.get(agent_id)
            if node is not None:
                await peer.send([node])
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                for value in stream.feed(data):
                    Node.from_json(value, "client node")
                    assert isinstance(value, dict)
                    peer.node = value
                    agent = self._agents.get(agent_id)
                    if agent is not None:
                        try:
                            await agent.send([value])
                        except (ConnectionError, TimeoutError, RuntimeError):
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
