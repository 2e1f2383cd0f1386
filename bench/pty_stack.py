"""Shared set-up for the terminal benchmarks: a real ``wsagent server`` and a real
``wsagent agent`` as subprocesses on loopback, with one user and one workspace.

The benchmark process itself is only the terminal client, so the three processes of the
path (client, server, agent) each get their own interpreter as in a real deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Stack:
    url: str
    user_token: str
    agent_id: str
    server: asyncio.subprocess.Process
    agent: asyncio.subprocess.Process

    def pty_url(self, command: str, rows: int = 24, cols: int = 80) -> str:
        query = {"reconnect": str(uuid.uuid4()), "height": rows, "width": cols}
        if command:
            query["command"] = command
        base = self.url.replace("http://", "ws://")
        return f"{base}/api/v2/workspaceagents/{self.agent_id}/pty?{urlencode(query)}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Coder-Session-Token": self.user_token}


async def _prepare(data_dir: Path) -> tuple[str, str, str]:
    from controlplane.admin import agent_spec, create_user, create_workspace
    from controlplane.store.sqlite import SQLiteStore

    store = await SQLiteStore.open(data_dir)
    try:
        _, user_token = await create_user(store, "bench")
        _, created = await create_workspace(store, "bench", "ws", [agent_spec({"name": "main"})])
    finally:
        await store.close()
    return user_token, created[0].record.id, created[0].token


async def _listening_port(pid: int) -> int:
    while True:
        inodes = set()
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                return int(parts[1].split(":")[1], 16)
        await asyncio.sleep(0.05)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "WSAGENT_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


async def _wait_connected(url: str, token: str, agent_id: str) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Coder-Session-Token": token}) as c:
        for _ in range(400):
            body = (await c.get(f"/api/v2/workspaceagents/{agent_id}")).json()
            if body.get("status") == "connected":
                return
            await asyncio.sleep(0.05)
    raise RuntimeError("agent never connected")


@contextlib.asynccontextmanager
async def running_stack() -> AsyncIterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="wsagent-ptybench-") as tmp:
        data_dir = Path(tmp) / "server"
        user_token, agent_id, agent_token = await _prepare(data_dir)
        devnull = asyncio.subprocess.DEVNULL
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wsagent", "server", "--data-dir", str(data_dir),
            "--address", "127.0.0.1:0", "--metrics-address", "",
            stdout=devnull, stderr=devnull, cwd=str(REPO),
            env=_env(WSAGENT_LOG_LEVEL="warning"),
        )  # fmt: skip
        agent = None
        try:
            port = await asyncio.wait_for(_listening_port(server.pid), 20)
            url = f"http://127.0.0.1:{port}"
            home = Path(tmp) / "home"
            home.mkdir()
            (home / ".hushlogin").touch()
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wsagent", "agent",
                stdout=devnull, stderr=devnull, cwd=str(REPO),
                env=_env(
                    CODER_AGENT_URL=url, CODER_AGENT_TOKEN=agent_token,
                    CODER_AGENT_LOG_DIR=str(Path(tmp) / "logs"), CODER_AGENT_LOG_LEVEL="warning",
                    HOME=str(home),
                ),
            )  # fmt: skip
            await _wait_connected(url, user_token, agent_id)
            yield Stack(url, user_token, agent_id, server, agent)
        finally:
            for proc in (agent, server):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 5)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
