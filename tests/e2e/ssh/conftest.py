"""Fixtures for SSH through the control plane: the real control plane in-process, the
real agent as a subprocess, and the system's OpenSSH client binaries with the published
host key in a known_hosts file and ``wsagent ssh --stdio`` as ProxyCommand."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shlex
import shutil
import struct
import sys
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="OpenSSH client not installed")


@dataclass
class SSHWorld:
    cp: ControlPlane
    agent: AgentProcess
    agent_id: str
    token: str
    other_token: str
    home: Path
    state_dir: Path
    client_dir: Path
    public_key: str
    agent_token: str = ""

    async def connected(self) -> bool:
        body = await self.cp.get_agent_json(self.agent_id, self.token)
        return bool(body["status"] == "connected")

    def agent_settings(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "CODER_AGENT_METRICS_ADDRESS": "",
            "CODER_AGENT_STATE_DIR": str(self.state_dir),
            "SHELL": "/bin/sh",
        }

    @property
    def known_hosts(self) -> Path:
        return self.client_dir / "known_hosts"

    def env(self, token: str | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
        base.pop("SSH_AUTH_SOCK", None)
        return {
            **base,
            "CODER_URL": self.cp.url,
            "CODER_SESSION_TOKEN": token or self.token,
            "WSAGENT_CONFIG_DIR": str(self.client_dir / "cfg"),
        }

    def options(self, known_hosts: Path | None = None) -> list[str]:
        proxy = shlex.join([sys.executable, "-m", "wsagent", "ssh", "--stdio", "dev"])
        return [
            "-F", "/dev/null",
            "-o", f"ProxyCommand={proxy}",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    async def run(
        self, program: str, *args: str, token: str | None = None, **kwargs: Any
    ) -> tuple[int, bytes, bytes]:
        """Run an OpenSSH program (ssh, scp, sftp) or wsagent with this world's variables."""
        return await self.run_env(self.env(token), program, *args, **kwargs)

    async def run_env(
        self,
        env: dict[str, str],
        program: str,
        *args: str,
        stdin: bytes = b"",
        timeout: float = 60.0,
    ) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=str(self.client_dir),
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return proc.returncode, out, err

    async def ssh(self, *args: str, **kwargs: Any) -> tuple[int, bytes, bytes]:
        assert SSH is not None
        return await self.run(SSH, *self.options(), *args, **kwargs)


async def make_ssh_world(
    cp: ControlPlane, start_agent: Any, tmp_path: Path, **env: str
) -> SSHWorld:
    _, token = await cp.create_user("alice")
    _, other = await cp.create_user("bob")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    spec = {"name": "main", "motd_file": str(home / "motd")}
    agents = await cp.create_workspace("alice", "dev", [spec])
    agent_id, agent_token = agents["main"]
    (home / ".hushlogin").touch()
    state_dir = tmp_path / "state"
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    extra = {
        "HOME": str(home),
        "CODER_AGENT_METRICS_ADDRESS": "",
        "CODER_AGENT_STATE_DIR": str(state_dir),
        "SHELL": "/bin/sh",
        **env,
    }
    agent = await start_agent(agent_env(cp.url, agent_token, tmp_path / "logs", **extra))

    async def published() -> str:
        async with cp.http(token) as client:
            response = await client.get(f"/api/v2/workspaceagents/{agent_id}/ssh-host-key")
        return str(response.json()["public_key"]) if response.status_code == 200 else ""

    public_key = await poll_until(published, timeout=30)
    world = SSHWorld(
        cp, agent, agent_id, token, other, home, state_dir, client_dir, public_key, agent_token
    )
    write_known_hosts(world.known_hosts, public_key)
    return world


def write_known_hosts(path: Path, public_key: str, hosts: Sequence[str] = ("dev",)) -> None:
    # ssh looks the host up by the name it was given ("dev"): ProxyCommand, no HostName.
    path.write_text("".join(f"{host} {public_key}\n" for host in hosts))


@pytest.fixture
async def world(control_plane: ControlPlane, start_agent: Any, tmp_path: Path) -> SSHWorld:
    if SSH is None:
        pytest.skip("OpenSSH client not installed")
    return await make_ssh_world(control_plane, start_agent, tmp_path)


async def user_get(world: SSHWorld, path: str, token: str) -> httpx.Response:
    async with world.cp.http(token) as client:
        return await client.get(path)


class LocalTerminal:
    """An OpenSSH client on a real local pseudo-terminal, as a person would run it: its
    window size can change (ssh then sends window-change) and keys like Ctrl-C are bytes."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self.output = bytearray()
        self._readable = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable.set)

    @classmethod
    async def start(
        cls, argv: Sequence[str], env: dict[str, str], rows: int = 24, cols: int = 80
    ) -> LocalTerminal:
        master, slave = os.openpty()
        set_window(slave, rows, cols)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(proc, master)

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                return
            except OSError:
                return  # EIO: the client has gone
            if not data:
                return
            self.output += data

    async def expect(self, pattern: bytes, timeout: float = 15.0) -> re.Match[bytes]:
        rx = re.compile(pattern, re.M)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._drain()
                    if m := rx.search(self.output):
                        return m
                    self._readable.clear()
                    await self._readable.wait()
        except TimeoutError:
            tail = bytes(self.output[-600:])
            raise AssertionError(f"{pattern!r} not seen within {timeout}s; got {tail!r}") from None

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, cols: int) -> None:
        set_window(self.master, rows, cols)  # the kernel sends SIGWINCH to ssh

    async def wait(self, timeout: float = 15.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        self._drain()
        return code

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        if self.proc.returncode is None:
            self.proc.kill()
        os.close(self.master)


def set_window(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
