"""``wsagent demo`` as a newcomer runs it: the printed URL and token work, the agent is
connected, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, poll_until
from tests.e2e.controlplane.cli import cli_env

pytestmark = pytest.mark.e2e


async def test_demo_starts_a_connected_agent_and_stops_on_sigint() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=cli_env(),
        cwd=str(REPO),
        start_new_session=True,
    )
    assert proc.stdout is not None
    text = ""
    try:
        async with asyncio.timeout(30):
            while "Press Ctrl-C to stop." not in text:
                line = await proc.stdout.readline()
                assert line, f"demo exited early ({await proc.wait()}):\n{text}"
                text += line.decode()
        url = re.search(r"control plane\s+(\S+)", text)
        token = re.search(r"user token\s+(\S+)", text)
        agent = re.search(r"agent\s+main\s+id\s+(\S+)", text)
        data_dir = re.search(r"data directory\s+(\S+)", text)
        assert url and token and agent and data_dir, text
        assert f"--token {token[1]}" in text and f"--agent {agent[1]}" in text

        async def connected() -> bool:
            async with httpx.AsyncClient(
                headers={"Coder-Session-Token": token[1]}, timeout=5
            ) as client:
                response = await client.get(f"{url[1]}/api/v2/workspaceagents/{agent[1]}")
            assert response.status_code == 200, response.text
            return bool(response.json()["status"] == "connected")

        await poll_until(connected, timeout=15, message="the demo agent never connected")

        # The printed curl command works as printed (a newcomer copy-pastes it).
        curl = text[text.index("  curl ") :].split("\n\n", 1)[0]
        if shutil.which("curl"):
            shell = await asyncio.create_subprocess_exec(
                "sh", "-c", curl, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(shell.communicate(), 10)
            assert shell.returncode == 0
            assert json.loads(out)["id"] == agent[1]

        # So does the printed terminal command (stdin is not a TTY here: lines go as typed).
        command = next(ln for ln in text.splitlines() if " terminal --url " in ln)
        terminal = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            command.strip(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        typed = b"echo demo-ok-$((40+2))\nexit 0\n"
        out, _ = await asyncio.wait_for(terminal.communicate(typed), 20)
        assert b"demo-ok-42" in out, out[-2000:]
        assert terminal.returncode == 0, out[-2000:]

        proc.send_signal(signal.SIGINT)
        rest = await asyncio.wait_for(proc.stdout.read(), 10)
        code = await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, rest
    assert b"demo stopped" in rest
    assert b"Traceback" not in rest
    assert not Path(data_dir[1]).exists()  # the temporary data directory is removed
