"""agent.metrics.MetricsServer on a real loopback socket: caps and timeouts."""

from __future__ import annotations

import asyncio
import socket

import pytest

import agent.metrics
from agent.metrics import MAX_HEAD_BYTES, MetricsServer

pytestmark = pytest.mark.e2e


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""  # closed with our bytes unread: the kernel resets instead of FIN
    finally:
        writer.close()


async def test_request_in_pieces_is_answered_and_oversized_head_is_dropped() -> None:
    server = MetricsServer("127.0.0.1", 0, lambda: "up 1\n")
    assert await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for piece in (b"GET /met", b"rics HTTP/1.1\r\nHost: x\r\n", b"\r\n"):
            writer.write(piece)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"up 1\n")

        huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_HEAD_BYTES) + b"\r\n\r\n"
        assert await _exchange(server.port, huge) == b""
    finally:
        await server.close()


async def test_silent_client_is_closed_after_the_head_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent.metrics, "HEAD_TIMEOUT", 0.2)
    server = MetricsServer("127.0.0.1", 0, lambda: "up 1\n")
    assert await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    finally:
        await server.close()


async def test_busy_port_returns_false() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = MetricsServer("127.0.0.1", busy.getsockname()[1], lambda: "")
        assert not await server.start()
        await server.close()
