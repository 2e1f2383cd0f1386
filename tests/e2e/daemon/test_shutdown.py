"""Acceptance: SIGTERM/SIGINT stop the daemon politely within 5 s; a second signal at once."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from agent.children import _has_live_member
from tests.conftest import ControlPlane
from tests.e2e.daemon.conftest import SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e

POLITE_CLOSE_CODES = (1000, 1001)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_exits_0_within_5s_closing_the_socket_politely(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str, signum: int
) -> None:
    """A connected daemon closes the coordinate socket with a close frame and exits 0."""
    daemon = await spawn_daemon(fake_cp.url, agent_token)
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    sent = time.monotonic()
    daemon.signal(signum)
    assert await daemon.wait_exit(5.0) == 0
    assert time.monotonic() - sent < 5.0
    await fake_cp.wait_for(lambda: bool(fake_cp.of("WS-CLOSE", "/me/coordinate")))
    assert fake_cp.of("WS-CLOSE", "/me/coordinate")[0].body in POLITE_CLOSE_CODES
    await daemon.wait_for_event("agent.stopped")
    # The daemon ran in its own process group: nothing of it is left behind.
    with pytest.raises(ProcessLookupError):
        os.killpg(daemon.proc.pid, 0)


async def test_sigterm_while_server_is_down_exits_0_quickly(
    spawn_daemon: SpawnDaemon, agent_token: str, unused_port_url: str
) -> None:
    """Between retries (nothing to close) the daemon stops at once, still with code 0."""
    daemon = await spawn_daemon(unused_port_url, agent_token)
    await daemon.wait_for_event("agent.run_failed")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(2.0) == 0


async def test_second_signal_exits_at_once(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """A server that never answers the close frame makes shutdown wait; a second signal
    cuts it short with 128+signum instead of the graceful 0."""
    fake_cp.coordinate_mode = "deaf"
    daemon = await spawn_daemon(fake_cp.url, agent_token)
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    daemon.signal(signal.SIGTERM)
    await daemon.wait_for_event("agent.signal_received")  # now waiting on the deaf close
    sent = time.monotonic()
    daemon.signal(signal.SIGINT)
    assert await daemon.wait_exit(2.0) == 128 + signal.SIGINT
    assert time.monotonic() - sent < 1.0  # the deaf close alone would take longer


async def test_sigterm_stops_a_stubborn_startup_script_group_within_5s(
    control_plane: ControlPlane, spawn_daemon: SpawnDaemon
) -> None:
    """A startup script whose whole group ignores TERM and HUP: TERM, grace (3 s), KILL;
    the daemon still exits 0 within 5 s and nothing of the group is left running."""
    _, _ = await control_plane.create_user("alice")
    script = "trap '' TERM HUP; echo $$ > \"$HOME/script.pid\"; sleep 300 & sleep 300 & wait"
    agents = await control_plane.create_workspace(
        "alice", "dev", [{"name": "main", "directory": "~", "startup_script": script}]
    )
    _, agent_token = agents["main"]
    daemon = await spawn_daemon(control_plane.url, agent_token)
    pid_file = daemon.home / "script.pid"
    async with asyncio.timeout(10):
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.02)  # the script's own side effect; nothing to wait on
    script_pid = int(pid_file.read_text())
    pgid = os.getpgid(script_pid)
    assert pgid != os.getpgid(daemon.proc.pid)  # the script runs in its own group
    async with asyncio.timeout(5):
        while sum(1 for _ in group_members(pgid)) < 3:  # sh and both sleeps are up
            await asyncio.sleep(0.02)

    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    assert time.monotonic() - sent < 5.0
    assert not _has_live_member(pgid)
    assert daemon.named("children.kill_after_grace")


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    members.append(int(entry))
            except ProcessLookupError:
                pass
    return members


async def test_sigterm_during_start_up_is_still_a_clean_exit_0(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """A signal that lands before the event loop handles signals is remembered, not fatal."""
    daemon = await spawn_daemon(fake_cp.url, agent_token)
    async with asyncio.timeout(10):
        while not daemon.log_file.exists():  # created just before the loop starts
            await asyncio.sleep(0.001)
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    assert daemon.named("agent.signal_received")
