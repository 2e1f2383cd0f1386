"""Under systemd the shutdown script asks for its time and the watchdog is fed meanwhile."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ControlPlane, agent_env, poll_until
from tests.e2e.systemd.test_sdnotify import WATCHDOG_USEC, NotifySocket, notify_socket

__all__ = ["notify_socket"]  # the fixture, shared with test_sdnotify


@pytest.mark.e2e
async def test_stopping_extends_the_stop_timeout_and_keeps_pinging(
    control_plane: ControlPlane, start_agent: Any, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    await control_plane.create_user("alice")
    agents = await control_plane.create_workspace(
        "alice",
        "dev",
        [
            {
                "name": "main",
                "startup_script": "true",
                "shutdown_script": "sleep 1.5",
                "shutdown_script_timeout": 20,
            }
        ],
    )
    token = agents["main"][1]
    env = agent_env(
        control_plane.url,
        token,
        tmp_path / "logs",
        HOME=str(tmp_path),
        NOTIFY_SOCKET=notify_socket.address,
        WATCHDOG_USEC=str(WATCHDOG_USEC),
    )
    agent = await start_agent(env)
    await poll_until(
        lambda: any("lifecycle: ready" in s for _, s in notify_socket.lines("STATUS=")),
        timeout=20,
    )
    agent.proc.send_signal(signal.SIGTERM)
    await poll_until(lambda: notify_socket.has("STOPPING=1"), timeout=5, message="no STOPPING=1")
    await poll_until(lambda: notify_socket.lines("EXTEND_TIMEOUT_USEC="), timeout=5)
    (_, extend), *_ = notify_socket.lines("EXTEND_TIMEOUT_USEC=")
    # The script's 20 s, the 1 s grace after TERM and 5 s for the rest of the shutdown.
    assert int(extend.split("=", 1)[1]) == 26_000_000
    stopping_at = notify_socket.lines("STOPPING=1")[0][0]
    assert await asyncio.wait_for(agent.proc.wait(), 15) == 0
    # The script ran ~1.5 s after STOPPING=1: the watchdog kept being fed meanwhile.
    pings = [t for t, _ in notify_socket.lines("WATCHDOG=1") if t > stopping_at]
    assert len(pings) >= 5, pings
    assert agent.find("shutdown.script_exited", exit_code=0)
