"""The real daemon streams its startup script's output to the real control plane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e


# 10,000 numbered lines; after the first 5,000 the script waits for the test's go-ahead, so
# the control plane is surely stopped while lines are still to come.
def ten_thousand(gate: Path) -> str:
    return (
        'i=0; while [ "$i" -lt 10000 ]; do echo "line $i"; i=$((i+1));'
        f' if [ "$i" -eq 5000 ]; then while [ ! -e {gate} ]; do sleep 0.05; done; fi; done'
    )


async def _workspace(cp: ControlPlane, name: str, script: str) -> tuple[str, str, str]:
    _, user_token = await cp.create_user(name)
    agents = await cp.create_workspace(name, "dev", [{"name": "main", "startup_script": script}])
    agent_id, agent_token = agents["main"]
    return agent_id, agent_token, user_token


async def _start(start_agent: Any, cp: ControlPlane, token: str, tmp_path: Path) -> AgentProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    agent: AgentProcess = await start_agent(
        agent_env(cp.url, token, tmp_path / "logs", HOME=str(home))
    )
    return agent


async def _outputs(cp: ControlPlane, agent_id: str, token: str) -> list[str]:
    out: list[str] = []
    after = 0
    async with cp.http(token) as client:
        while True:
            response = await client.get(
                f"/api/v2/workspaceagents/{agent_id}/startup-logs", params={"after": after}
            )
            assert response.status_code == 200, response.text
            page = response.json()
            if not page:
                return out
            out.extend(e["output"] for e in page)
            after = page[-1]["id"]


async def test_ten_thousand_lines_survive_a_control_plane_restart(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "go-on"
    agent_id, token, user_token = await _workspace(control_plane, "alice", ten_thousand(gate))
    agent = await _start(start_agent, control_plane, token, tmp_path)

    async def some_stored() -> bool:
        return len(await _outputs(control_plane, agent_id, user_token)) > 0

    await poll_until(some_stored, timeout=20, message="no startup log line reached the server")
    await control_plane.stop()
    gate.touch()  # the second half is printed while the control plane is away
    await agent.wait_for_event("startuplogs.post_failed", timeout=20)
    await control_plane.start()

    expected = [f"line {i}" for i in range(10000)]

    async def complete() -> bool:
        return len(await _outputs(control_plane, agent_id, user_token)) >= len(expected)

    await poll_until(complete, timeout=60, message="the startup logs never became complete")
    await agent.wait_for_event("startup.script_exited", exit_code=0, timeout=30)
    assert await _outputs(control_plane, agent_id, user_token) == expected
    body = await control_plane.get_agent_json(agent_id, user_token)
    assert body["startup_logs_length"] == sum(len(x) for x in expected)
    assert body["startup_logs_overflowed"] is False


async def test_past_one_mebibyte_the_server_flags_overflow_and_the_agent_stops(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    # 1,300 lines of 1,000 bytes: past the 1 MiB cap.
    script = "head -c 1300000 /dev/zero | tr '\\0' x | fold -w 1000; echo; echo done"
    agent_id, token, user_token = await _workspace(control_plane, "bob", script)
    agent = await _start(start_agent, control_plane, token, tmp_path)
    await agent.wait_for_event("startuplogs.overflowed", timeout=30)
    await agent.wait_for_event("startup.script_exited", exit_code=0, timeout=30)
    body = await control_plane.get_agent_json(agent_id, user_token)
    assert body["startup_logs_overflowed"] is True
    assert body["startup_logs_length"] <= 1 << 20
    stored = await _outputs(control_plane, agent_id, user_token)
    assert stored == ["x" * 1000] * len(stored) and len(stored) == (1 << 20) // 1000
    # Stopped means stopped: the lines after the overflow never went out.
    assert len(agent.find("startuplogs.overflowed")) == 1
    # The log file on disk has everything.
    text = (tmp_path / "logs" / "coder-startup-script.log").read_text()
    assert text.count("x" * 1000) == 1300 and text.endswith("done\n")
