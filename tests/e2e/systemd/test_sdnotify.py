"""The daemon's side of systemd: a test plays systemd's part on a real datagram socket.

Messages are received with their arrival time, so the watchdog's rhythm can be checked:
while the event loop turns, ``WATCHDOG=1`` comes every ``WATCHDOG_USEC/2``; while it is
blocked on purpose (``CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER``, a test hook) none comes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import sdnotify
from tests.conftest import ControlPlane, agent_env, poll_until
from tests.fakes.clock import FakeClock

WATCHDOG_USEC = 200_000  # pings every 0.1 s
BLOCK_AFTER = 1.0
BLOCK_FOR = 2.0


@dataclass
class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: every datagram, split into its assignments."""

    sock: socket.socket
    address: str  # what goes into NOTIFY_SOCKET
    received: list[tuple[float, str]] = field(default_factory=list)

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            now = time.monotonic()
            for line in data.decode().split("\n"):
                self.received.append((now, line))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in self.received if line.startswith(prefix)]

    def status_since(self, index: int, *fragments: str) -> bool:
        """Whether a STATUS= after the first ``index`` lines contains one of ``fragments``."""
        return any(
            line.startswith("STATUS=") and any(f in line for f in fragments)
            for _, line in self.received[index:]
        )

    def has(self, line: str) -> bool:
        return any(text == line for _, text in self.received)


@pytest.fixture(params=["abstract", "path"])
async def notify_socket(request: Any, tmp_path: Path) -> AsyncIterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if request.param == "abstract":
        name = f"wsagent-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        # sun_path holds 108 bytes: pytest's tmp_path can be longer than that.
        short = Path("/tmp") / f"wsn-{uuid.uuid4().hex[:12]}"
        sock.bind(str(short))
        address = str(short)
    notify = NotifySocket(sock, address)
    reader = asyncio.create_task(notify.receive())
    yield notify
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    sock.close()
    if not address.startswith("@"):
        Path(address).unlink(missing_ok=True)


async def _agent_token(control_plane: ControlPlane) -> str:
    await control_plane.create_user("alice")
    agents = await control_plane.create_workspace(
        "alice", "dev", [{"name": "main", "directory": "~", "startup_script": "true"}]
    )
    return agents["main"][1]


@pytest.mark.e2e
async def test_ready_status_watchdog_stopping(
    control_plane: ControlPlane, start_agent: Any, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    token = await _agent_token(control_plane)
    env = agent_env(
        control_plane.url,
        token,
        tmp_path / "logs",
        NOTIFY_SOCKET=notify_socket.address,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
    )
    agent = await start_agent(env)
    await poll_until(lambda: notify_socket.has("READY=1"), timeout=15, message="no READY=1")
    await poll_until(
        lambda: any("connection: connected" in s for _, s in notify_socket.lines("STATUS=")),
        timeout=15,
        message=f"no connected STATUS=: {notify_socket.received}",
    )
    await poll_until(
        lambda: any("lifecycle: ready" in s for _, s in notify_socket.lines("STATUS=")),
        timeout=15,
        message=f"no lifecycle STATUS=: {notify_socket.received}",
    )
    seen = len(notify_socket.lines("WATCHDOG=1"))
    await poll_until(
        lambda: len(notify_socket.lines("WATCHDOG=1")) >= seen + 5,
        timeout=5,
        message="watchdog pings are not periodic",
    )
    # READY=1 is sent once only.
    assert len([t for t, s in notify_socket.received if s == "READY=1"]) == 1

    # The connection state follows the socket: down with the server, up again after it.
    before = len(notify_socket.received)
    await control_plane.stop()
    await poll_until(
        lambda: notify_socket.status_since(before, "connection: backoff", "connection: connecting"),
        timeout=15,
        message="STATUS= did not follow the disconnection",
    )
    before = len(notify_socket.received)
    await control_plane.start()
    await poll_until(
        lambda: notify_socket.status_since(before, "connection: connected"),
        timeout=20,
        message="STATUS= did not follow the reconnection",
    )

    agent.proc.send_signal(signal.SIGTERM)
    await poll_until(lambda: notify_socket.has("STOPPING=1"), timeout=5, message="no STOPPING=1")
    assert await asyncio.wait_for(agent.proc.wait(), 10) == 0


@pytest.mark.e2e
async def test_watchdog_pings_stop_while_the_loop_is_blocked(
    control_plane: ControlPlane, start_agent: Any, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    token = await _agent_token(control_plane)
    env = agent_env(
        control_plane.url,
        token,
        tmp_path / "logs",
        NOTIFY_SOCKET=notify_socket.address,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
        CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER=str(BLOCK_AFTER),
        CODER_AGENT_DEBUG_BLOCK_LOOP_FOR=str(BLOCK_FOR),
    )
    agent = await start_agent(env)
    blocked = await agent.wait_for_event("sdnotify.debug_blocking_loop", timeout=15)
    assert blocked["seconds"] == BLOCK_FOR
    await agent.wait_for_event("sdnotify.debug_loop_unblocked", timeout=BLOCK_FOR + 5)
    # Pings resume once the loop turns again: the gap was the block, not a dead agent.
    after_block = len(notify_socket.lines("WATCHDOG=1"))
    await poll_until(
        lambda: len(notify_socket.lines("WATCHDOG=1")) >= after_block + 3,
        timeout=5,
        message="watchdog pings did not resume",
    )
    times = [t for t, _ in notify_socket.lines("WATCHDOG=1")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # One gap spans the block (the interval is 0.1 s); before it the pings were regular.
    assert len([g for g in gaps if g >= BLOCK_FOR * 0.8]) == 1, gaps
    assert await agent.terminate() == 0


@pytest.mark.e2e
async def test_no_notify_socket_means_no_systemd_and_no_leak_to_children(
    control_plane: ControlPlane, start_agent: Any, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """The variables are removed once read: the startup script does not inherit them."""
    await control_plane.create_user("alice")
    out = tmp_path / "child-env"
    agents = await control_plane.create_workspace(
        "alice",
        "dev",
        [{"name": "main", "directory": "~", "startup_script": f"env > {out}"}],
    )
    env = agent_env(
        control_plane.url,
        agents["main"][1],
        tmp_path / "logs",
        NOTIFY_SOCKET=notify_socket.address,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
        WATCHDOG_PID=str(os.getpid()),  # meant for another process: no pings
    )
    agent = await start_agent(env)
    await poll_until(lambda: out.exists() and out.read_text(), timeout=15)
    await poll_until(lambda: notify_socket.has("READY=1"), timeout=5)
    text = out.read_text()
    assert "NOTIFY_SOCKET" not in text and "WATCHDOG_USEC" not in text
    assert not notify_socket.lines("WATCHDOG=1")
    assert await agent.terminate() == 0


def test_socket_address_forms() -> None:
    assert sdnotify.socket_address("@sd") == "\0sd"
    assert sdnotify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.socket_address("") is None
    assert sdnotify.socket_address("@") is None
    assert sdnotify.socket_address("vsock:2:1234") is None


def test_watchdog_interval() -> None:
    assert sdnotify.watchdog_interval("30000000", "", 7) == 15.0
    assert sdnotify.watchdog_interval("30000000", "7", 7) == 15.0
    assert sdnotify.watchdog_interval("30000000", "8", 7) is None
    assert sdnotify.watchdog_interval("", "", 7) is None
    assert sdnotify.watchdog_interval("0", "", 7) is None
    assert sdnotify.watchdog_interval("x", "", 7) is None


def test_notifier_without_socket_is_a_no_op() -> None:
    environ = {"WATCHDOG_USEC": "1000"}
    notifier = sdnotify.Notifier.from_environ(environ, os.getpid())
    assert not notifier.enabled and notifier.watchdog is None
    assert environ == {}
    notifier.ready("x")
    notifier.stopping()
    assert not notifier.send("WATCHDOG=1")


def test_status_is_one_line_and_capped() -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"wsagent-test-{uuid.uuid4().hex}"
    server.bind("\0" + name)
    server.settimeout(5)
    notifier = sdnotify.Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}, os.getpid())
    try:
        notifier.status("a\nREADY=1 " + "x" * 500)
        message = server.recv(4096).decode()
        assert message.count("\n") == 0 and message.startswith("STATUS=a READY=1 ")
        assert len(message) == len("STATUS=") + sdnotify.MAX_STATUS_CHARS
        notifier.status("a\nREADY=1 " + "x" * 500)  # unchanged: not sent again
        notifier.stopping()
        assert server.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    finally:
        notifier.close()
        server.close()


@pytest.mark.e2e
async def test_bad_settings_exit_2_without_ready(
    start_agent: Any, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """READY=1 means the settings are valid: a bad one exits 2 and systemd never hears it."""
    env = agent_env(
        "http://127.0.0.1:9",
        "token",
        tmp_path / "logs",
        NOTIFY_SOCKET=notify_socket.address,
        CODER_AGENT_RECONNECT_MAX_DELAY="-1s",
    )
    agent = await start_agent(env)
    assert await asyncio.wait_for(agent.proc.wait(), 15) == 2
    assert not notify_socket.received


async def test_pings_follow_the_watchdog_interval_not_the_status_refresh() -> None:
    """WATCHDOG_USEC/2 apart, even when STATUS= is refreshed more often (virtual time)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"wsagent-test-{uuid.uuid4().hex}"
    server.bind("\0" + name)
    server.setblocking(False)
    environ = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "600000"}  # a ping every 0.3 s
    clock = FakeClock()
    notifier = sdnotify.Notifier.from_environ(environ, os.getpid(), clock)
    statuses = iter(range(1000))
    task = asyncio.create_task(
        notifier.run_watchdog(lambda: f"n{next(statuses)}", status_interval=0.05)
    )
    pings: list[float] = []
    status_count = 0

    def receive() -> None:
        """Take what was sent at the current virtual instant."""
        nonlocal status_count
        while True:
            try:
                message = server.recv(4096).decode()
            except BlockingIOError:
                return
            if message == "WATCHDOG=1":
                pings.append(clock.now)
            else:
                status_count += 1

    try:
        await clock.settle()
        receive()
        while len(pings) < 4:
            assert await clock.step() and clock.now < 1000 + 10
            receive()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        notifier.close()
        server.close()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(g >= 0.25 for g in gaps), gaps
    assert status_count >= 2 * len(gaps), status_count
