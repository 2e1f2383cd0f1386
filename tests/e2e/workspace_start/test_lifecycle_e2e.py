"""The real daemon runs the startup script against the real control plane (docs/protocol.md,
"Startup script")."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e


async def _workspace(cp: ControlPlane, name: str, **agent: Any) -> tuple[str, str, str]:
    _, user_token = await cp.create_user(name)
    agents = await cp.create_workspace(name, "dev", [{"name": "main", **agent}])
    agent_id, agent_token = agents["main"]
    return agent_id, agent_token, user_token


async def _lifecycle(cp: ControlPlane, agent_id: str, token: str) -> str:
    body = await cp.get_agent_json(agent_id, token)
    return str(body["lifecycle_state"])


async def _wait_state(
    cp: ControlPlane, agent_id: str, token: str, state: str, timeout: float = 15
) -> None:
    async def reached() -> bool:
        return await _lifecycle(cp, agent_id, token) == state

    await poll_until(reached, timeout=timeout, message=f"lifecycle never became {state}")


def _server_states(logs: Sequence[Mapping[str, Any]], agent_id: str) -> list[str]:
    return [
        e["state"]
        for e in logs
        if e.get("event") == "agent.lifecycle" and e.get("agent_id") == agent_id
    ]


async def _start(
    start_agent: Any, cp: ControlPlane, token: str, tmp_path: Path, **env: str
) -> AgentProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    agent: AgentProcess = await start_agent(
        agent_env(cp.url, token, tmp_path / "logs", HOME=str(home), **env)
    )
    return agent


async def test_true_goes_starting_then_ready(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """`true` → the server receives starting, then ready."""
    agent_id, token, user_token = await _workspace(control_plane, "alice", startup_script="true")
    assert await _lifecycle(control_plane, agent_id, user_token) == "created"
    with capture_logs() as logs:
        agent = await _start(start_agent, control_plane, token, tmp_path)
        await _wait_state(control_plane, agent_id, user_token, "ready")
    assert _server_states(logs, agent_id) == ["starting", "ready"]
    await agent.wait_for_event("startup.script_exited", exit_code=0)


async def test_false_goes_start_error(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """`false` → starting, then start_error."""
    agent_id, token, user_token = await _workspace(control_plane, "bob", startup_script="false")
    with capture_logs() as logs:
        agent = await _start(start_agent, control_plane, token, tmp_path)
        await _wait_state(control_plane, agent_id, user_token, "start_error")
    assert _server_states(logs, agent_id) == ["starting", "start_error"]
    await agent.wait_for_event("startup.script_exited", exit_code=1)
    # Not routine: a warning with the exit code and where the script's output is.
    failed = await agent.wait_for_event("lifecycle.changed", state="start_error")
    assert failed["level"] == "warning"
    assert failed["exit_code"] == 1
    assert failed["log_path"] == str(tmp_path / "logs" / "coder-startup-script.log")


async def test_timeout_then_ready(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """`sleep 5` with a 100 ms timeout → start_timeout while it runs, then ready at exit 0."""
    agent_id, token, user_token = await _workspace(
        control_plane, "carol", startup_script="sleep 5", startup_script_timeout_seconds=0.1
    )
    async with control_plane.http(token) as agent_http:
        metadata = (await agent_http.get("/api/v2/workspaceagents/me/metadata")).json()
    assert metadata["startup_script_timeout"] == 100_000_000  # integer nanoseconds
    with capture_logs() as logs:
        agent = await _start(start_agent, control_plane, token, tmp_path)
        await _wait_state(control_plane, agent_id, user_token, "start_timeout")
        # Still running: the timeout reports, it does not kill.
        assert not agent.find("startup.script_exited")
        slow = await agent.wait_for_event("lifecycle.changed", state="start_timeout")
        assert slow["level"] == "warning"
        assert slow["log_path"] == str(tmp_path / "logs" / "coder-startup-script.log")
        await _wait_state(control_plane, agent_id, user_token, "ready")
    assert _server_states(logs, agent_id) == ["starting", "start_timeout", "ready"]


async def test_timeout_then_start_error(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """After start_timeout a failing exit still moves the state to start_error."""
    agent_id, token, user_token = await _workspace(
        control_plane, "cora", startup_script="sleep 2; exit 3", startup_script_timeout_seconds=1
    )
    with capture_logs() as logs:
        await _start(start_agent, control_plane, token, tmp_path)
        await _wait_state(control_plane, agent_id, user_token, "start_error")
    assert _server_states(logs, agent_id) == ["starting", "start_timeout", "start_error"]


async def test_output_env_and_directory(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """Output (stdout and stderr) lands in the 0600 log, truncated per run; the script sees
    the session environment and runs in the expanded directory."""
    script = (
        'echo "out-line"; echo "err-line" >&2; echo "pwd=$(pwd)"; '
        "for v in CODER USER GIT_SSH_COMMAND CODER_AGENT_TOKEN GIT_ASKPASS VSCODE_PROXY_URI "
        'TEMPLATE_VAR EMPTY_VAR; do printf "%s=%s\\n" "$v" "$(printenv $v)"; done'
    )
    agent_id, token, user_token = await _workspace(
        control_plane,
        "dave",
        startup_script=script,
        directory="~/project",
        env={"TEMPLATE_VAR": "$HOME/data", "EMPTY_VAR": "x$SOMETHING_NOT_SET"},
    )
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    log_file = log_dir / "coder-startup-script.log"
    log_file.write_bytes(b"stale " * 100_000)  # Coder would leave this tail behind
    log_file.chmod(0o644)
    await _start(start_agent, control_plane, token, tmp_path)
    await _wait_state(control_plane, agent_id, user_token, "ready")
    text = log_file.read_text()
    assert "stale" not in text
    assert (log_file.stat().st_mode & 0o777) == 0o600
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert "out-line" in text and "err-line" in text
    assert values["pwd"] == str(home / "project")
    assert values["CODER"] == "true"
    assert values["USER"]
    assert values["GIT_SSH_COMMAND"].endswith(" gitssh --")
    assert values["CODER_AGENT_TOKEN"] == token
    assert os.access(values["GIT_ASKPASS"], os.X_OK)
    assert os.path.basename(values["GIT_ASKPASS"]) == "wsagent"
    assert values["TEMPLATE_VAR"] == f"{home}/data"
    assert values["EMPTY_VAR"] == "x"
    assert "VSCODE_PROXY_URI" in values


async def test_missing_directory_falls_back_to_home(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    agent_id, token, user_token = await _workspace(
        control_plane, "erin", startup_script="pwd", directory="~/does-not-exist"
    )
    await _start(start_agent, control_plane, token, tmp_path)
    await _wait_state(control_plane, agent_id, user_token, "ready")
    assert (tmp_path / "logs" / "coder-startup-script.log").read_text().strip() == str(
        tmp_path / "home"
    )


async def test_log_is_capped_and_says_so(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """10 MiB of output → a 5 MiB log that says output was dropped; the script still
    succeeds (it is never blocked on a full pipe)."""
    script = "head -c 10485760 /dev/zero | tr '\\000' x; echo; echo tail-marker"
    agent_id, token, user_token = await _workspace(control_plane, "fay", startup_script=script)
    await _start(start_agent, control_plane, token, tmp_path)
    await _wait_state(control_plane, agent_id, user_token, "ready")
    log_file = tmp_path / "logs" / "coder-startup-script.log"

    def trailer_written() -> bool:
        return b"bytes of startup script output were dropped" in log_file.read_bytes()[-1024:]

    await poll_until(trailer_written, timeout=10)
    data = log_file.read_bytes()
    assert len(data) <= 5 * 1024 * 1024
    assert len(data) > 5 * 1024 * 1024 - 1024
    assert b"further output is dropped" in data
    assert b"tail-marker" not in data


async def test_not_rerun_after_reconnect_and_state_reposted(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """A control-plane restart makes the agent reconnect: the script does not run again,
    and the current state is posted again in case the server lost it."""
    agent_id, token, user_token = await _workspace(
        control_plane, "gil", startup_script='echo run >> "$HOME/runs.txt"'
    )
    agent = await _start(start_agent, control_plane, token, tmp_path)
    await _wait_state(control_plane, agent_id, user_token, "ready")
    await agent.wait_for_event("lifecycle.reported", state="ready")
    with capture_logs() as logs:
        await control_plane.restart()
        await poll_until(lambda: _server_states(logs, agent_id) == ["ready"], timeout=15)
    # The re-post is routine, so the agent logs it at debug: the server's record above is
    # the proof it landed. No second info line for the same state.
    assert len(agent.find("lifecycle.reported", state="ready")) == 1
    assert (tmp_path / "home" / "runs.txt").read_text() == "run\n"
    assert len(agent.find("startup.script_started")) == 1


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (PID 1 here may not reap)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.append(int(entry))
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
async def test_killed_agent_leaves_no_script_process(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path, signum: int
) -> None:
    """SIGTERM: shutdown stops the group. SIGKILL: the watchdog does. The script and its
    background child ignore SIGTERM, so the KILL after the grace period is needed too."""
    script = "trap '' TERM; sleep 300 & sleep 301"
    agent_id, token, user_token = await _workspace(control_plane, "hal", startup_script=script)
    with capture_logs() as logs:
        agent = await _start(
            start_agent, control_plane, token, tmp_path, CODER_AGENT_SHUTDOWN_GRACE="0.5"
        )
        started = await agent.wait_for_event("startup.script_started")
        pgid = int(started["pid"])
        await poll_until(lambda: len(_live_members(pgid)) >= 2, timeout=10)
        await _wait_state(control_plane, agent_id, user_token, "starting")
        os.kill(agent.proc.pid, signum)
        await agent.proc.wait()
        await poll_until(lambda: not _live_members(pgid), timeout=10, message="script survived")
    # Cancellation reports nothing more (as Coder): no start_error for the killed script.
    assert "start_error" not in _server_states(logs, agent_id)


async def test_state_reached_while_server_down_lands_after_it_returns(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """The script finishes while the control plane is down: the post fails, is retried,
    and `ready` lands once the server is back."""
    gate = tmp_path / "gate"
    script = f'while [ ! -e "{gate}" ]; do sleep 0.05; done'
    agent_id, token, user_token = await _workspace(control_plane, "ida", startup_script=script)
    agent = await _start(start_agent, control_plane, token, tmp_path)
    await agent.wait_for_event("lifecycle.reported", state="starting")
    await control_plane.stop()
    gate.touch()
    await agent.wait_for_event("lifecycle.post_failed", state="ready")
    await control_plane.start()
    await _wait_state(control_plane, agent_id, user_token, "ready", timeout=20)
    await agent.wait_for_event("lifecycle.reported", state="ready")
