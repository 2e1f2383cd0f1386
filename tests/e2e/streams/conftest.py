"""Fixtures for byte streams: the real control plane in-process, the real agent as a
subprocess, a TCP echo server standing in for a program in the workspace (the test
machine's loopback is the workspace's), all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until


@dataclass
class StreamWorld:
    cp: ControlPlane
    agent: AgentProcess
    agent_id: str
    token: str
    other_token: str
    home: Path

    def url(self, target: str, agent_id: str | None = None) -> str:
        base = self.cp.url.replace("http://", "ws://")
        return f"{base}/api/v2/workspaceagents/{agent_id or self.agent_id}/stream?" + urlencode(
            {"target": target}
        )

    async def open(self, target: str, token: str | None = None) -> ClientConnection:
        return await connect(
            self.url(target),
            additional_headers={"Coder-Session-Token": token or self.token},
            compression=None,
            open_timeout=15,
            close_timeout=2,
        )

    async def connected(self) -> bool:
        body = await self.cp.get_agent_json(self.agent_id, self.token)
        return bool(body["status"] == "connected")


async def make_stream_world(
    cp: ControlPlane, start_agent: Any, tmp_path: Path, **env: str
) -> StreamWorld:
    _, token = await cp.create_user("alice")
    _, other = await cp.create_user("bob")
    agents = await cp.create_workspace("alice", "dev", [{"name": "main"}])
    agent_id, agent_token = agents["main"]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".hushlogin").touch()
    extra = {"HOME": str(home), "CODER_AGENT_METRICS_ADDRESS": "", **env}
    agent = await start_agent(agent_env(cp.url, agent_token, tmp_path / "logs", **extra))
    world = StreamWorld(cp, agent, agent_id, token, other, home)
    await poll_until(world.connected, timeout=20)
    return world


@pytest.fixture
async def streams(control_plane: ControlPlane, start_agent: Any, tmp_path: Path) -> StreamWorld:
    return await make_stream_world(control_plane, start_agent, tmp_path)


@dataclass
class EchoServer:
    port: int
    connections: int = 0


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    """Echoes every byte back; answers its client's end-of-file with its own."""
    state = EchoServer(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


def in_flight_bound(tcp_hops: int, app_slack: int = 8 << 20) -> int:
    """The most bytes a stalled path may hold: every TCP hop's kernel buffers at their
    autotuning maximum (send + receive), plus a few MiB of bounded application queues.
    Past this, something buffers without bound."""
    maxima = 0
    for name in ("tcp_rmem", "tcp_wmem"):
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            maxima += int(f.read().split()[2])
    return tcp_hops * maxima + app_slack
