"""Acceptance: the daemon's logs — JSON off a terminal, readable on one, a 0600 file, and
the token never written anywhere, error paths included."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.daemon.conftest import SpawnDaemon, daemon_env
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
FAST_RETRY = {"CODER_AGENT_RECONNECT_MAX_DELAY": "200ms"}


async def test_token_never_logged_even_when_the_server_echoes_it(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """A 500 whose detail contains the token, a refused socket, a clean run and shutdown:
    the token appears in none of stdout, stderr or the log file."""
    fake_cp.metadata_mode = "500"
    fake_cp.coordinate_mode = "refuse"
    daemon = await spawn_daemon(fake_cp.url, agent_token, **FAST_RETRY)
    await fake_cp.wait_for(lambda: len(fake_cp.metadata_requests) >= 3)
    fake_cp.metadata_mode = "ok"
    await fake_cp.wait_for(lambda: len(fake_cp.coordinate_opens) >= 3)
    fake_cp.coordinate_mode = "ok"
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0

    file_text = daemon.log_file.read_text()
    for where, text in [
        ("stdout", daemon.stdout.decode()),
        ("stderr", daemon.stderr.decode()),
        ("log file", file_text),
    ]:
        assert agent_token not in text, f"token leaked to {where}"
    # The echo did reach the log, scrubbed: the redaction is what kept it out.
    assert "[REDACTED]" in daemon.named("agent.run_failed")[0]["error"]
    assert "[REDACTED]" in file_text


async def test_log_file_is_0600_json_lines_mirroring_stdout(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """``coder-agent.log`` is created 0600 and holds the same JSON events as stdout."""
    daemon = await spawn_daemon(fake_cp.url, agent_token)
    await daemon.wait_for_event("agent.connected")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0

    assert daemon.log_file.stat().st_mode & 0o777 == 0o600
    lines = [json.loads(line) for line in daemon.log_file.read_text().splitlines()]
    assert [e["event"] for e in lines] == [e["event"] for e in daemon.events]
    for event in lines:
        assert event["level"] in ("debug", "info", "warning", "error")
        assert event["timestamp"].endswith("+00:00")
        assert "." in event["event"]  # component.event


def test_terminal_gets_readable_lines_not_json(
    tmp_path: Path, agent_token: str, unused_port_url: str
) -> None:
    """With stdout on a terminal the daemon prints human-readable lines; the file stays JSON."""
    home = tmp_path / "home"
    home.mkdir()
    env = daemon_env(unused_port_url, agent_token, tmp_path / "logs", home)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsagent", "agent"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 10
    try:
        while b"agent.run_failed" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                output += os.read(master, 4096)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
        os.close(master)
    lines = output.decode().splitlines()
    starting = next(line for line in lines if "agent.starting" in line)
    assert not starting.lstrip().startswith("{")
    assert "version=v" in starting
    file_lines = (tmp_path / "logs" / "coder-agent.log").read_text().splitlines()
    assert json.loads(file_lines[0])["event"] == "agent.starting"
    assert proc.returncode == 0


async def test_unreachable_server_logs_one_line_not_one_per_retry(
    spawn_daemon: SpawnDaemon, agent_token: str, unused_port_url: str
) -> None:
    """Connection refused on every retry for a while: one warning, not one per attempt."""
    daemon = await spawn_daemon(unused_port_url, agent_token, **FAST_RETRY)
    await daemon.wait_for_event("agent.run_failed")
    # Let ~6 retries happen (no server to observe them, so this one wait is on the clock).
    await asyncio.sleep(1.2)
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    assert len(daemon.named("agent.run_failed")) == 1
    assert len(daemon.events) <= 6


async def test_a_stdout_nobody_reads_does_not_stall_the_agent(
    fake_cp: FakeControlPlane, agent_token: str, tmp_path: Path
) -> None:
    """stdout is a 4 KiB pipe that is never read: the agent keeps reconnecting (logging at
    debug on every attempt), its log file keeps every line, and SIGTERM still exits 0."""
    fake_cp.coordinate_mode = "drop_at_once"
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    home = tmp_path / "home"
    home.mkdir()
    env = daemon_env(
        fake_cp.url,
        agent_token,
        tmp_path / "logs",
        home,
        CODER_AGENT_LOG_LEVEL="debug",
        CODER_AGENT_RECONNECT_MAX_DELAY="20ms",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "agent",
        env=env,
        stdout=write_end,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        # ~1 KiB of debug lines per attempt: the pipe is full after a few attempts.
        await fake_cp.wait_for(lambda: len(fake_cp.coordinate_opens) >= 40, within=20)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(read_end)
    file_text = (tmp_path / "logs" / "coder-agent.log").read_text()
    assert file_text.count('"agent.connected"') >= 40
    assert '"agent.stopped"' in file_text


async def test_log_file_rotates_at_its_size_cap(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """With CODER_AGENT_LOG_MAX_SIZE=4KiB and chatty debug logging the file is rotated to
    ``coder-agent.log.1``; neither outgrows the cap, both stay 0600."""
    fake_cp.coordinate_mode = "drop_at_once"
    daemon = await spawn_daemon(
        fake_cp.url,
        agent_token,
        CODER_AGENT_LOG_MAX_SIZE="4KiB",
        CODER_AGENT_LOG_LEVEL="debug",
        CODER_AGENT_RECONNECT_MAX_DELAY="20ms",
    )
    rotated = daemon.log_dir / "coder-agent.log.1"
    await fake_cp.wait_for(lambda: len(fake_cp.coordinate_opens) >= 30, within=20)
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    assert rotated.exists()
    for path in (daemon.log_file, rotated):
        assert 0 < path.stat().st_size <= 4096
        assert path.stat().st_mode & 0o777 == 0o600
        for line in path.read_text().splitlines():
            json.loads(line)  # rotation happens between lines, never inside one
