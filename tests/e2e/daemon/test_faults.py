"""Acceptance: a misbehaving control plane neither kills the daemon nor floods its log."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from tests.e2e.daemon.conftest import Daemon, SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e

FAST_RETRY = {"CODER_AGENT_RECONNECT_MAX_DELAY": "200ms"}
ATTEMPTS_PER_MODE = 8


def file_events(daemon: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in daemon.log_file.read_text().splitlines()]


async def test_metadata_faults_are_survived_throttled_and_recovered(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """500s, malformed JSON and wrong types: the daemon retries, logs each kind once,
    and connects as soon as the server is fixed."""
    fake_cp.metadata_mode = "500"
    daemon = await spawn_daemon(fake_cp.url, agent_token, **FAST_RETRY)
    for mode in ("malformed", "wrong_types", "ok"):

        def eight_more(seen: int = len(fake_cp.metadata_requests)) -> bool:
            return len(fake_cp.metadata_requests) >= seen + 8

        await fake_cp.wait_for(eight_more)
        fake_cp.metadata_mode = mode
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1 and len(fake_cp.startups) == 1)
    assert daemon.proc.returncode is None

    failures = daemon.named("agent.run_failed")
    # 24+ failed attempts, three kinds of failure: three lines, one per kind.
    assert len(fake_cp.metadata_requests) >= 3 * ATTEMPTS_PER_MODE
    assert len(failures) == 3, failures
    assert "500" in failures[0]["error"]
    assert failures[1]["error_type"] == failures[2]["error_type"] == "DecodeError"
    assert "$.apps" in failures[2]["error"] or "$.startup_script_timeout" in failures[2]["error"]
    recovered = await daemon.wait_for_event("agent.connected")
    assert recovered["recovered_after_failures"] >= 3 * ATTEMPTS_PER_MODE
    # The log file holds the same lines as stdout: no line per retry there either.
    assert len([e for e in file_events(daemon) if e["event"] == "agent.run_failed"]) == 3
    assert len(file_events(daemon)) < 15

    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0


async def test_flapping_coordinate_socket_is_not_logged_per_retry(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """A socket the server drops right after the upgrade: retried, but logged once."""
    fake_cp.coordinate_mode = "drop_at_once"
    daemon = await spawn_daemon(fake_cp.url, agent_token, **FAST_RETRY)
    await fake_cp.wait_for(lambda: len(fake_cp.coordinate_opens) >= 10)
    fake_cp.coordinate_mode = "ok"
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    assert len(daemon.named("agent.run_failed")) == 1
    assert len(daemon.named("agent.connected")) <= 2
    # The connection loop's own lines. (lifecycle.* re-reports its state after each
    # reconnect by design of the startup component; it is counted by its own tests.)
    events = [e for e in file_events(daemon) if not e["event"].startswith("lifecycle.")]
    assert len(events) < 10, "\n".join(f"{e['event']} {e.get('error', '')[:70]}" for e in events)


async def test_refused_coordinate_socket_is_retried(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """A 500 on the websocket upgrade is a typed failure, retried until it opens."""
    fake_cp.coordinate_mode = "refuse"
    daemon = await spawn_daemon(fake_cp.url, agent_token, **FAST_RETRY)
    await fake_cp.wait_for(lambda: len(fake_cp.coordinate_opens) >= 5)
    fake_cp.coordinate_mode = "ok"
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    [failure] = daemon.named("agent.run_failed")
    assert failure["error_type"] == "ApiError"
    assert "500" in failure["error"]
