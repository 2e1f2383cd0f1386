"""``wsagent terminal`` as a user runs it, against the real control plane and agent: the
re-attach command is printed when the session starts and when the client is stopped,
``--reconnect last`` gets the same shell back, and close reasons are words."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from controlplane.terminal import close_words
from tests.conftest import REPO, ControlPlane
from tests.e2e.terminals.test_e2e import Setup, _setup

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


class Client:
    """A ``wsagent terminal`` subprocess with piped stdin, stdout and stderr."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = bytearray()
        self.err = bytearray()
        self._changed = asyncio.Condition()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]

    async def _pump(self, stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(65536):
            into.extend(chunk)
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, where: str, pattern: bytes, within: float = 20.0) -> re.Match[bytes]:
        buffer = self.out if where == "out" else self.err
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: re.search(pattern, buffer) is not None)
        found = re.search(pattern, buffer)
        assert found is not None
        return found

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())

    async def exit_code(self, within: float = 20.0) -> int:
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return code


async def _client(setup: Setup, state: Path, *args: str) -> Client:
    env = {**os.environ, "XDG_STATE_HOME": str(state), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "terminal",
        "--url",
        setup.cp.url,
        "--token",
        setup.token,
        "--agent",
        setup.agent_id,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO),
        env=env,
    )
    return Client(proc)


@pytest.fixture
async def term(control_plane: ControlPlane, start_agent: Any, tmp_path: Path) -> Setup:
    return await _setup(control_plane, start_agent, tmp_path)


async def test_reattach_hint_at_start_and_on_sigterm_then_reconnect_last(
    term: Setup, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = await _client(term, state, "--command", "sh")
    hint = await first.wait_for(
        "err", rb"\[session ([0-9a-f-]{36}); re-attach with --reconnect last, or: ([^\]]+)\]"
    )
    session_id = hint[1].decode()
    command = hint[2].decode()
    assert f"--reconnect {session_id}" in command and f"--agent {term.agent_id}" in command
    first.type("echo marker-$((40+2))\n")
    await first.wait_for("out", rb"marker-42")

    first.proc.send_signal(signal.SIGTERM)
    assert await first.exit_code() == 128 + signal.SIGTERM
    stopped = first.err.decode()
    assert "[terminal stopped (SIGTERM); the session keeps running: re-attach with" in stopped
    assert stopped.count(f"--reconnect {session_id}") == 2
    assert "Traceback" not in stopped

    # The same shell, scrollback and all, through --reconnect last.
    again = await _client(term, state, "--reconnect", "last", "--command", "sh")
    await again.wait_for("err", rf"\[session {session_id};".encode())
    await again.wait_for("out", rb"marker-42")  # replayed scrollback: the same session
    again.type("exit 3\n")
    assert await again.exit_code() == 3
    # The shell is gone: no re-attach hint at the end, and the reason is in words.
    assert again.err.decode().rstrip().endswith("[terminal closed: process exited with code 3]")


async def test_control_plane_shutdown_is_said_in_words(term: Setup, tmp_path: Path) -> None:
    client = await _client(term, tmp_path / "state", "--command", "sh")
    client.type("echo up-$((1+1))\n")
    await client.wait_for("out", rb"up-2")
    await term.cp.stop()
    assert await client.exit_code() == 1
    end = client.err.decode().rstrip().splitlines()[-1]
    assert end.startswith("[terminal closed: control plane shutting down; re-attach with"), end
    assert "1000" not in end and "1001" not in end and "WSCloseCode" not in end


async def test_reconnect_last_without_an_earlier_session_is_one_line(
    term: Setup, tmp_path: Path
) -> None:
    client = await _client(term, tmp_path / "empty-state", "--reconnect", "last")
    assert await client.exit_code() == 2
    assert client.err.decode().splitlines() == [
        f"wsagent terminal: error: no earlier session on agent {term.agent_id} at"
        f" {term.cp.url} to re-attach"
    ]


def test_close_words() -> None:
    assert close_words(1001, "server shutting down") == "control plane shutting down"
    assert close_words(1001, "") == "control plane shutting down"
    assert close_words(1000, "") == "closed"
    assert close_words(None, "") == "connection lost"
    assert close_words(1013, "terminal session limit reached") == "terminal session limit reached"
    assert close_words(4000, "") == "closed (code 4000)"
