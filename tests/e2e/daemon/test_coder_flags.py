"""`coder agent`'s flags and variables work on the real daemon: --log-human/--log-json/
--log-stackdriver outputs, --prometheus-address for the metrics endpoint, --pprof-address
accepted with a line saying there is no profiler."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import httpx
import pytest

from tests.e2e.daemon.conftest import SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_coder_log_outputs_metrics_alias_and_pprof(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str, tmp_path: Path
) -> None:
    port = _free_port()
    json_file = tmp_path / "agent.json"
    stackdriver_file = tmp_path / "agent.stackdriver"
    daemon = await spawn_daemon(
        fake_cp.url,
        agent_token,
        "--log-human",
        "/dev/stderr",
        "--log-json",
        str(json_file),
        "--pprof-address",
        "127.0.0.1:6060",
        CODER_AGENT_LOGGING_STACKDRIVER=str(stackdriver_file),
        CODER_AGENT_PROMETHEUS_ADDRESS=f"127.0.0.1:{port}",
    )
    await daemon.wait_for_event("agent.connected")
    listening = await daemon.wait_for_event("metrics.listening")
    assert listening["address"] == f"127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(10.0) == 0

    pprof = daemon.named("agent.pprof_unavailable")[0]
    assert pprof["level"] == "warning"
    assert pprof["address"] == "127.0.0.1:6060"
    assert "not available" in pprof["reason"]

    events = [e["event"] for e in daemon.events]
    json_events = [json.loads(line)["event"] for line in json_file.read_text().splitlines()]
    assert json_events == events
    assert json_file.stat().st_mode & 0o777 == 0o600
    stackdriver = [json.loads(line) for line in stackdriver_file.read_text().splitlines()]
    assert [e["message"] for e in stackdriver] == events
    assert {e["severity"] for e in stackdriver} >= {"INFO", "WARNING"}
    assert all(e["time"] for e in stackdriver)
    human = daemon.stderr.decode()
    assert "agent.connected" in human
    assert not human.lstrip().startswith("{")  # readable lines, not JSON
    assert agent_token not in human + json_file.read_text() + stackdriver_file.read_text()


async def test_unusable_log_output_is_a_one_line_usage_error(
    spawn_daemon: SpawnDaemon, agent_token: str, unused_port_url: str, tmp_path: Path
) -> None:
    """--log-json naming a directory fails at start with exit 2 and the path."""
    daemon = await spawn_daemon(unused_port_url, agent_token, "--log-json", str(tmp_path))
    assert await daemon.wait_exit(10.0) == 2
    lines = daemon.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert str(tmp_path) in lines[0]
