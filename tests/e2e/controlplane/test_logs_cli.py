"""``wsagent logs``: the real CLI against the real control plane."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from controlplane import startuplogs
from tests.conftest import REPO
from tests.e2e.controlplane.conftest import ME, World

pytestmark = pytest.mark.e2e


def lines(*texts: str) -> dict[str, object]:
    return {"logs": [{"created_at": "2023-05-01T12:00:00Z", "output": t} for t in texts]}


async def run_cli(world: World, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
    env.update({"CODER_URL": world.cp.url, "CODER_SESSION_TOKEN": world.owner_token})
    env["WSAGENT_CONFIG_DIR"] = "/nonexistent"  # never a real session file
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "logs",
        *args,
        env=env,
        cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_prints_every_stored_line(world: World) -> None:
    async with world.agent() as client:
        await client.patch(f"{ME}/startup-logs", json=lines("hello", "", "world"))
    proc = await run_cli(world, "dev")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert out.decode() == "hello\n\nworld\n"
    named = await run_cli(world, "dev.main")
    out, _ = await asyncio.wait_for(named.communicate(), 30)
    assert named.returncode == 0 and out.decode() == "hello\n\nworld\n"


async def test_unknown_workspace_or_agent_is_a_clear_error(world: World) -> None:
    for target, message in (("nope", "unknown workspace 'nope'"), ("dev.x", "no agent 'x'")):
        proc = await run_cli(world, target)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1
        assert message in err.decode()


async def test_follow_prints_new_lines_within_a_second(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the wake-up on a new line can deliver it: the server's periodic re-read (every
    # 5 s) is pushed out of the test's reach. So a line that arrives at all was pushed, and
    # the deadline can allow a loaded machine.
    monkeypatch.setattr(startuplogs, "RECHECK_INTERVAL", 3600.0)
    async with world.agent() as client:
        await client.patch(f"{ME}/startup-logs", json=lines("old"))
    proc = await run_cli(world, "dev", "--follow")
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"old\n"
        for text in ("new 1", "new 2"):
            async with world.agent() as client:
                response = await client.patch(f"{ME}/startup-logs", json=lines(text))
                assert response.status_code == 200
            line = await asyncio.wait_for(proc.stdout.readline(), 5)
            assert line == f"{text}\n".encode()
    finally:
        proc.terminate()
        await proc.wait()


async def test_uses_the_session_file_wsagent_login_saved(world: World, tmp_path: Path) -> None:
    from wsagent.remote.session import SESSION_FILE, Credentials, save_session

    async with world.agent() as client:
        await client.patch(f"{ME}/startup-logs", json=lines("from the session"))
    save_session(tmp_path / SESSION_FILE, Credentials(world.cp.url, world.owner_token))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
    env["WSAGENT_CONFIG_DIR"] = str(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "logs",
        "dev",
        env=env,
        cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert out.decode() == "from the session\n"
