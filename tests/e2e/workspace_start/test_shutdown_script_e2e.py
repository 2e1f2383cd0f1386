"""SIGTERM runs the shutdown script and reports the shutdown states to the real server."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import AgentProcess, ControlPlane, agent_env

pytestmark = pytest.mark.e2e


async def _workspace(cp: ControlPlane, name: str, **agent: Any) -> tuple[str, str, str]:
    _, user_token = await cp.create_user(name)
    agents = await cp.create_workspace(name, "dev", [{"name": "main", **agent}])
    agent_id, agent_token = agents["main"]
    return agent_id, agent_token, user_token


async def _start(start_agent: Any, cp: ControlPlane, token: str, tmp_path: Path) -> AgentProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    agent: AgentProcess = await start_agent(
        agent_env(cp.url, token, tmp_path / "logs", HOME=str(home))
    )
    await agent.wait_for_event("lifecycle.reported", state="ready", timeout=30)
    return agent


def _states(logs: Sequence[Mapping[str, Any]], agent_id: str) -> list[str]:
    return [
        e["state"]
        for e in logs
        if e.get("event") == "agent.lifecycle" and e.get("agent_id") == agent_id
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _stop(agent: AgentProcess, limit: float) -> float:
    started = time.monotonic()
    code = await agent.terminate(timeout=limit + 5)
    elapsed = time.monotonic() - started
    assert code == 0
    return elapsed


async def test_sigterm_runs_the_script_with_a_valid_token_then_reports_off(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    # The script calls the control plane with the agent's token: it is still valid.
    probe = (
        f'{sys.executable} -c "import os, urllib.request as u; '
        "r = u.urlopen(u.Request(os.environ['CODER_AGENT_URL'] + "
        "'/api/v2/workspaceagents/me/gitsshkey', "
        "headers={'Coder-Session-Token': os.environ['CODER_AGENT_TOKEN']})); "
        "print('gitsshkey', r.status)\""
    )
    agent_id, token, user_token = await _workspace(
        control_plane,
        "alice",
        startup_script="true",
        shutdown_script=f"echo goodbye; {probe}",
        shutdown_script_timeout=30,
    )
    agent = await _start(start_agent, control_plane, token, tmp_path)
    with capture_logs() as logs:
        elapsed = await _stop(agent, 30)
    assert _states(logs, agent_id) == ["shutting_down", "off"]
    assert elapsed < 10
    text = (tmp_path / "logs" / "coder-shutdown-script.log").read_text()
    assert text == "goodbye\ngitsshkey 200\n"
    assert oct((tmp_path / "logs" / "coder-shutdown-script.log").stat().st_mode & 0o777) == "0o600"
    body = await control_plane.get_agent_json(agent_id, user_token)
    assert body["lifecycle_state"] == "off"
    assert body["shutdown_script"].startswith("echo goodbye")
    assert body["shutdown_script_timeout_seconds"] == 30
    # The socket closed after the states were reported.
    agent_closed = [
        e["event"] for e in logs if e.get("event") in ("agent.lifecycle", "agent.disconnected")
    ]
    assert agent_closed[-1] == "agent.disconnected"


async def test_a_failing_script_reports_shutdown_error(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    agent_id, token, _ = await _workspace(
        control_plane, "bob", startup_script="true", shutdown_script="echo no >&2; exit 3"
    )
    agent = await _start(start_agent, control_plane, token, tmp_path)
    with capture_logs() as logs:
        await _stop(agent, 30)
    assert _states(logs, agent_id) == ["shutting_down", "shutdown_error"]
    assert agent.find("shutdown.script_exited", exit_code=3)
    assert (tmp_path / "logs" / "coder-shutdown-script.log").read_text() == "no\n"


async def test_a_hanging_script_is_ended_at_its_timeout(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = (
        f"echo $$ > {pids}; sleep 1000 & echo $! >> {pids}; "
        # A child that ignores TERM: only the KILL after the grace ends it.
        f"sh -c 'trap \"\" TERM; sleep 1000' & echo $! >> {pids}; wait"
    )
    agent_id, token, _ = await _workspace(
        control_plane,
        "carol",
        startup_script="true",
        shutdown_script=script,
        shutdown_script_timeout=2,
    )
    agent = await _start(start_agent, control_plane, token, tmp_path)
    with capture_logs() as logs:
        elapsed = await _stop(agent, 2)
    assert _states(logs, agent_id) == ["shutting_down", "shutdown_timeout"]
    assert 2 <= elapsed < 2 + 5, elapsed
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3

    async def all_gone() -> bool:
        return not any(_alive(p) for p in started)

    deadline = time.monotonic() + 5
    while not await all_gone():
        assert time.monotonic() < deadline, [p for p in started if _alive(p)]
        await asyncio.sleep(0.05)


async def test_without_a_script_the_agent_reports_off_and_exits_promptly(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    agent_id, token, _ = await _workspace(control_plane, "dave", startup_script="true")
    agent = await _start(start_agent, control_plane, token, tmp_path)
    with capture_logs() as logs:
        elapsed = await _stop(agent, 0)
    assert _states(logs, agent_id) == ["shutting_down", "off"]
    assert elapsed < 5
    assert not (tmp_path / "logs" / "coder-shutdown-script.log").exists()
