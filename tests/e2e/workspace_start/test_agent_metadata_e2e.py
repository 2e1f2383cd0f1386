"""The real daemon runs the template's metadata commands and the real server keeps them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e


async def _start(
    start_agent: Any, cp: ControlPlane, name: str, metadata: list[dict[str, Any]], tmp_path: Path
) -> tuple[str, str, AgentProcess]:
    _, user_token = await cp.create_user(name)
    agents = await cp.create_workspace(name, "dev", [{"name": "main", "metadata": metadata}])
    agent_id, token = agents["main"]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    agent: AgentProcess = await start_agent(
        agent_env(cp.url, token, tmp_path / "logs", HOME=str(home))
    )
    return agent_id, user_token, agent


async def _results(cp: ControlPlane, agent_id: str, token: str) -> dict[str, dict[str, Any]]:
    view = await cp.get_agent_json(agent_id, token)
    return {m["description"]["key"]: m["result"] for m in view.get("metadata", [])}


async def test_two_keys_update_on_their_intervals(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    counter = tmp_path / "n"
    metadata = [
        # Each run prints the next number: a changing value proves it runs again.
        {"key": "count", "script": f"echo x >> {counter}; wc -l < {counter}", "interval": 1},
        {"key": "hello", "script": "printf hello", "interval": 1},
    ]
    agent_id, token, _ = await _start(start_agent, control_plane, "alice", metadata, tmp_path)
    seen: set[str] = set()

    async def three_values() -> bool:
        results = await _results(control_plane, agent_id, token)
        value = results.get("count", {}).get("value", "").strip()
        if value:
            seen.add(value)
        return len(seen) >= 3 and results["hello"]["value"] == "hello"

    await poll_until(three_values, timeout=20, interval=0.2)
    results = await _results(control_plane, agent_id, token)
    assert results["hello"]["error"] == "" and results["count"]["error"] == ""
    # One run at a time per key, about one a second: not a burst.
    assert len(counter.read_text().splitlines()) < 20


async def test_a_slow_command_times_out_and_10_mb_of_output_is_capped(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    metadata = [
        {"key": "slow", "script": "echo started; sleep 30", "interval": 60, "timeout": 1},
        {"key": "big", "script": "head -c 10000000 /dev/zero | tr '\\0' y", "interval": 60},
    ]
    agent_id, token, agent = await _start(start_agent, control_plane, "bob", metadata, tmp_path)

    async def both_reported() -> dict[str, dict[str, Any]] | None:
        results = await _results(control_plane, agent_id, token)
        done = all(
            results.get(k, {}).get("collected_at", "0001").startswith("20") for k in metadata_keys
        )
        return results if done else None

    metadata_keys = ("slow", "big")
    results = await poll_until(both_reported, timeout=20, interval=0.2)
    assert results["slow"]["error"] == "run cmd: timed out after 1s"
    assert results["slow"]["value"] == "started\n"
    # The agent keeps 10 KiB of it; the server keeps 2048 bytes and says so.
    assert results["big"]["value"] == "y" * 2048
    assert results["big"]["error"] == "value of 10240 bytes exceeded 2048 bytes"
    assert agent.proc.returncode is None
