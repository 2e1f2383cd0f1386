"""Connection limits: idle and slow clients cannot exhaust the server's file descriptors.

The attack is bounded (a few hundred sockets on 127.0.0.1 for a few seconds) but larger
than the server process's descriptor limit, which the test sets low on purpose.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from controlplane.connguard import GUARD
from tests.conftest import poll_until
from tests.e2e.controlplane.conftest import ME, World
from tests.e2e.controlplane.test_durability import drain_output, start_server_process

pytestmark = pytest.mark.e2e

SERVER_FDS = 256  # the server's hard RLIMIT_NOFILE in the attack test
IDLE = 300  # connections that never send a byte
SLOWLORIS = 100  # connections that send half a request head and then trickle


def _low_fd_limit() -> None:
    # Soft below hard, as systemd sets it: the server must raise its soft limit itself.
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, SERVER_FDS))


def _soft_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line in /proc/<pid>/limits")


class Attack:
    """Sockets held open against the server; opening stops at the first failure, so an
    exhausted server ends the attack within a second instead of queueing timeouts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []
        self.failed: str | None = None

    async def open(self, first_bytes: bytes = b"") -> asyncio.StreamWriter | None:
        if self.failed:
            return None
        try:
            # Long enough for one SYN retransmit (1 s): on a loaded machine the accept
            # queue can fill for a moment without anything being wrong; a server out of
            # descriptors stops accepting for good, and this still fails then.
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        except (OSError, TimeoutError) as exc:
            self.failed = f"connection {len(self.writers) + 1}: {exc!r}"
            return None
        writer.write(first_bytes)
        self.writers.append(writer)
        return writer

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


async def _healthz_ms(client: httpx.AsyncClient) -> float:
    start = time.perf_counter()
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    return (time.perf_counter() - start) * 1000


async def test_idle_and_slowloris_connections_leave_healthz_answering(tmp_path: Path) -> None:
    own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if own_hard != resource.RLIM_INFINITY and own_hard < 2 * (IDLE + SLOWLORIS):
        pytest.skip("this process cannot open enough sockets for the attack")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(own_soft, 2 * (IDLE + SLOWLORIS)), own_hard))
    proc, url = await start_server_process(tmp_path / "data", preexec_fn=_low_fd_limit)
    output = drain_output(proc)
    attack = Attack(int(url.rsplit(":", 1)[1]))
    try:
        assert _soft_fd_limit(proc.pid) == SERVER_FDS  # raised from 128 to the hard limit
        for _ in range(IDLE):
            await attack.open()
        slow = [
            await attack.open(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad-%d: " % i)
            for i in range(SLOWLORIS)
        ]
        latencies: list[float] = []
        async with httpx.AsyncClient(
            base_url=url, timeout=2, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client:
            for round_ in range(20):
                # Keep trickling header bytes on the slowloris sockets between probes.
                for writer in slow:
                    if writer is not None and not writer.is_closing():
                        writer.write(b"a")
                latencies.append(await _healthz_ms(client))
                if round_ == 10:  # and open a fresh wave in the middle
                    for _ in range(50):
                        await attack.open()
        assert statistics.median(latencies) < 100, latencies
        assert max(latencies) < 1000, latencies
        # Every attacking socket was accepted: more than the server has descriptors.
        assert attack.failed is None, attack.failed
        assert len(attack.writers) == IDLE + SLOWLORIS + 50
        assert proc.returncode is None, "".join(output)
    finally:
        attack.close()
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (own_soft, own_hard))


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closes the connection (EOF or reset)."""
    start = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(65536), within)
        while data:
            data = await asyncio.wait_for(reader.read(65536), within)
    except ConnectionResetError:
        pass
    return time.monotonic() - start


async def test_a_partial_request_head_times_out(world_factory: Any) -> None:
    w: World = await world_factory(head_timeout=0.5, idle_timeout=60)
    reader, writer = await asyncio.open_connection("127.0.0.1", w.cp.config.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    elapsed = await _closed_by_server(reader, 10)
    writer.close()
    assert 0.4 <= elapsed < 5, elapsed


async def test_an_idle_keep_alive_connection_times_out(world_factory: Any) -> None:
    w: World = await world_factory(head_timeout=60, idle_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", w.cp.config.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    # The body (16 bytes) follows; then the connection idles until the server ends it.
    elapsed = await _closed_by_server(reader, 10)
    writer.close()
    assert 0.4 <= elapsed < 5, elapsed


async def test_a_slow_request_body_is_408(world_factory: Any) -> None:
    w: World = await world_factory(body_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", w.cp.config.port)
    writer.write(
        b"POST /api/v2/workspaceagents/me/report-stats HTTP/1.1\r\nHost: x\r\n"
        b"Coder-Session-Token: " + w.agent_token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head


async def test_a_client_gone_mid_body_is_not_a_server_error(world_factory: Any) -> None:
    w: World = await world_factory()
    with capture_logs() as logs:
        _, writer = await asyncio.open_connection("127.0.0.1", w.cp.config.port)
        writer.write(
            b"POST /api/v2/workspaceagents/me/report-stats HTTP/1.1\r\nHost: x\r\n"
            b"Coder-Session-Token: " + w.agent_token.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        ended = await poll_until(
            lambda: [e for e in logs if e["event"].startswith("http.")],
            timeout=10,
            message="the server never finished the cut-short request",
        )
    assert [e["event"] for e in ended] == ["http.request_failed"], ended


async def test_over_the_cap_the_oldest_unauthenticated_connection_goes(
    world_factory: Any,
) -> None:
    """The cap evicts the least recently active unauthenticated connection, never a
    connection that presented a valid token, and never refuses the newcomer."""
    w: World = await world_factory(max_unauthenticated=8, idle_timeout=60, head_timeout=60)
    port = w.cp.config.port
    # An agent's keep-alive connection, authenticated by its first request.
    agent_reader, agent_writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        f"GET {ME}/gitsshkey HTTP/1.1\r\nHost: x\r\nCoder-Session-Token: {w.agent_token}\r\n\r\n"
    ).encode()
    agent_writer.write(request)
    assert (await asyncio.wait_for(agent_reader.readuntil(b"\r\n\r\n"), 5)).startswith(
        b"HTTP/1.1 200"
    )
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    # The first 12 idle ones were evicted as later ones came; the last 8 are still open.
    for i, (reader, _) in enumerate(idle[:12]):
        assert await _closed_by_server(reader, 5) < 5, f"connection {i} not evicted"
    for reader, _ in idle[12:]:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.05)
    # The agent's connection survived all of it.
    await agent_reader.read(65536)  # the rest of the first answer
    agent_writer.write(request)
    assert (await asyncio.wait_for(agent_reader.readuntil(b"\r\n\r\n"), 5)).startswith(
        b"HTTP/1.1 200"
    )
    guard = w.cp.app[GUARD]
    assert guard.evicted == 12
    for _, writer in [*idle, (agent_reader, agent_writer)]:
        writer.close()
    # Nothing is left counted once every connection is gone.
    await poll_until(lambda: guard.unauthenticated == 0, timeout=5)
