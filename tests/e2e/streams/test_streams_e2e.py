"""Byte streams end to end: a WebSocket client on /stream, the real control plane, the real
agent dialling back, and a TCP server on the workspace's loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.conftest import poll_until
from tests.e2e.streams.conftest import EchoServer, StreamWorld, in_flight_bound, make_stream_world

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def read_until_eof(ws: ClientConnection, timeout: float = 10.0) -> bytes:
    """Every byte until the empty end-of-file message."""
    out = bytearray()
    async with asyncio.timeout(timeout):
        while message := await ws.recv():
            assert isinstance(message, bytes)
            out += message
    return bytes(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def refusal(
    world: StreamWorld, target: str, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        await world.open(target, token)
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_tcp_stream_echoes_and_half_closes(
    streams: StreamWorld, echo_server: EchoServer
) -> None:
    ws = await streams.open(f"tcp:{echo_server.port}")
    payload = os.urandom(300_000)
    for i in range(0, len(payload), 50_000):
        await ws.send(payload[i : i + 50_000])
    await ws.send(b"")  # end-of-file: the echo server answers with its own
    assert await read_until_eof(ws) == payload
    await ws.close()
    assert echo_server.connections == 1


async def test_closed_port_is_an_http_error_before_upgrade(streams: StreamWorld) -> None:
    port = free_port()
    status, body = await refusal(streams, f"tcp:{port}")
    assert status == 502
    assert body["message"] == f"Failed to connect to tcp:{port} in the workspace."
    assert f"port {port} is closed in the workspace" in body["detail"]
    assert "connection refused" in body["detail"]


@pytest.mark.parametrize("target", ["tcp:0", "tcp:65536", "tcp:", "udp:53", "tcp:-1", ""])
async def test_bad_target_is_400(streams: StreamWorld, target: str) -> None:
    status, body = await refusal(streams, target)
    assert status == 400
    assert body["message"].startswith("Query param 'target' must be")
    assert body["validations"][0]["field"] == "target"


async def test_other_user_gets_404(streams: StreamWorld, echo_server: EchoServer) -> None:
    status, body = await refusal(streams, f"tcp:{echo_server.port}", streams.other_token)
    assert status == 404
    assert body["message"] == "Resource not found or you do not have access to this resource"
    assert echo_server.connections == 0


async def test_disconnected_agent_is_400(streams: StreamWorld, echo_server: EchoServer) -> None:
    await streams.agent.terminate()
    status, body = await refusal(streams, f"tcp:{echo_server.port}")
    assert status == 400
    assert body["message"].startswith('Agent state is "')


async def test_stream_counts_as_tcp_in_stats(
    make_control_plane: Any, start_agent: Any, tmp_path: Path, echo_server: EchoServer
) -> None:
    cp = await make_control_plane(stats_interval=0.5)
    world = await make_stream_world(cp, start_agent, tmp_path)
    ws = await world.open(f"tcp:{echo_server.port}")
    await ws.send(b"x" * 1000)
    await ws.send(b"")
    assert await read_until_eof(ws) == b"x" * 1000
    await ws.close()

    async def reported() -> Any:
        rows = await cp.store.list_stats(world.agent_id)
        return [r for r in rows if r.conns_by_proto.get("tcp")]

    rows = await poll_until(reported, timeout=15)
    assert sum(r.rx_bytes for r in rows) >= 1000
    assert sum(r.tx_bytes for r in rows) >= 1000


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_stalled_reader_keeps_memory_flat(streams: StreamWorld) -> None:
    """A workspace program writing as fast as it can to a user who never reads: only
    bounded buffers fill on the agent and the server, then the producer blocks."""
    sent = [0]
    blocked = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def produce(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        chunk = b"y" * 65536
        with contextlib.suppress(OSError):
            while True:
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 2.0)
                except TimeoutError:
                    blocked.set()  # nobody downstream takes more
                    await writer.drain()
                sent[0] += len(chunk)

    server = await asyncio.start_server(produce, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        ws = await connect(
            streams.url(f"tcp:{port}"),
            additional_headers={"Coder-Session-Token": streams.token},
            compression=None,
            max_queue=1,
            close_timeout=1,
        )
        await asyncio.wait_for(blocked.wait(), 30)
        agent_before = _rss_kib(streams.agent.proc.pid)
        server_before = _rss_kib(os.getpid())
        sent_before = sent[0]
        # The producer stays blocked while the reader stalls: nothing more gets through.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 2.0)
        assert sent[0] - sent_before <= 2 * 65536
        assert _rss_kib(streams.agent.proc.pid) - agent_before < 4096
        assert _rss_kib(os.getpid()) - server_before < 4096
        # Bounded in flight: three TCP hops' kernel buffers and a few queued messages.
        assert sent_before < in_flight_bound(3), sent_before
        ws.transport.abort()
        for writer in writers:
            writer.transport.abort()
