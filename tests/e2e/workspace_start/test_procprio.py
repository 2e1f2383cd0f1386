"""Process priority (CODER_PROC_PRIO_MGMT): children get nice +5 and oom_score_adj 998,
the agent keeps its own."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.children import ChildRegistry
from agent.procprio import PRELUDE, ChildPriority
from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _nice(pid: int | str) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[16])


def _oom(pid: int | str) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_off_unless_asked() -> None:
    for value in ("", "0", "false", "off"):
        priority = ChildPriority.from_environ({"CODER_PROC_PRIO_MGMT": value})
        assert not priority.enabled
        assert priority.argv(["sh", "-c", "x"]) == ["sh", "-c", "x"]
    assert not ChildPriority.from_environ({}).enabled


def test_one_log_line_where_it_cannot_work(tmp_path: Path) -> None:
    env = {"CODER_PROC_PRIO_MGMT": "1", "PATH": os.environ.get("PATH", "")}
    with capture_logs() as logs:
        not_linux = ChildPriority.from_environ(env, platform="darwin")
        read_only = ChildPriority.from_environ(env, proc_self=tmp_path / "missing")
        no_nice = ChildPriority.from_environ({"CODER_PROC_PRIO_MGMT": "1", "PATH": str(tmp_path)})
    assert not (not_linux.enabled or read_only.enabled or no_nice.enabled)
    events = [e for e in logs if e["event"] == "procprio.unavailable"]
    assert len(events) == 3
    assert "oom_score_adj" in events[1]["reason"] and "nice" in events[2]["reason"]


@linux_only
def test_argv_goes_through_the_prelude() -> None:
    priority = ChildPriority.from_environ({"CODER_PROC_PRIO_MGMT": "1", "PATH": "/usr/bin:/bin"})
    assert priority.enabled
    argv = priority.argv(["/bin/bash", "-c", "echo hi"])
    assert argv[:3] == ["/bin/sh", "-c", PRELUDE]
    assert argv[3].endswith("/nice") and argv[4:] == ["/bin/bash", "-c", "echo hi"]


@pytest.mark.e2e
@linux_only
async def test_a_terminal_started_through_the_registry_gets_the_values(tmp_path: Path) -> None:
    """Terminals spawn through the registry's argv too (the PTY path)."""
    from agent.pty.process import spawn

    out = tmp_path / "out"
    priority = ChildPriority.from_environ({"CODER_PROC_PRIO_MGMT": "1", "PATH": "/usr/bin:/bin"})
    registry = ChildRegistry(priority=priority)
    script = f"echo $(nice) $(cat /proc/self/oom_score_adj) > {out}.tmp; mv {out}.tmp {out}"
    child = spawn(registry.launch_argv(["/bin/sh", "-c", script]), dict(os.environ), None, 24, 80)
    try:
        await poll_until(out.exists, timeout=10)
        nice, oom = out.read_text().split()
        assert int(nice) == os.nice(0) + 5 and int(oom) == 998
    finally:
        await asyncio.wait_for(child.terminate(1.0), 5)


@pytest.mark.e2e
@linux_only
async def test_the_agents_children_get_nice_and_oom_score_adj_the_agent_keeps_its_own(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    report = tmp_path / "startup"
    script = (
        f"echo $(nice) $(cat /proc/self/oom_score_adj) > {report}.tmp; mv {report}.tmp {report}"
    )
    _, user_token = await control_plane.create_user("alice")
    agents = await control_plane.create_workspace(
        "alice",
        "dev",
        [
            {
                "name": "main",
                "startup_script": script,
                "metadata": [
                    {
                        "key": "prio",
                        "script": "echo $(nice) $(cat /proc/self/oom_score_adj)",
                        "interval": 60,
                    }
                ],
            }
        ],
    )
    agent_id, token = agents["main"]
    home = tmp_path / "home"
    home.mkdir()
    agent: AgentProcess = await start_agent(
        agent_env(
            control_plane.url, token, tmp_path / "logs", HOME=str(home), CODER_PROC_PRIO_MGMT="1"
        )
    )
    await agent.wait_for_event("procprio.enabled", timeout=15)
    await poll_until(report.exists, timeout=20)
    own_nice, own_oom = _nice(agent.proc.pid), _oom(agent.proc.pid)
    assert (own_nice, own_oom) == (os.nice(0), _oom("self"))  # the agent: unchanged
    nice, oom = report.read_text().split()
    assert int(nice) == own_nice + 5 and int(oom) == 998

    async def metadata_value() -> str:
        view = await control_plane.get_agent_json(agent_id, user_token)
        value: str = view["metadata"][0]["result"]["value"]
        return value.strip()

    value = await poll_until(metadata_value, timeout=20)
    assert value == f"{own_nice + 5} 998"
