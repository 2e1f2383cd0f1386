"""Run the real daemon (``python -m wsagent agent``) as a subprocess for acceptance tests.

Each daemon gets its own log dir and HOME, writes JSON lines to a pipe (so not a TTY), and
is killed at teardown if a test left it running. ``wait_for_event`` waits on the parsed
stdout lines with a deadline; nothing here sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.fakes.fake_control_plane import FakeControlPlane

# Environment the daemon must not inherit from the test runner.
_DROP = ("CODER_", "HOME")


class Daemon:
    def __init__(self, proc: asyncio.subprocess.Process, log_dir: Path, home: Path) -> None:
        self.proc = proc
        self.log_dir = log_dir
        self.home = home
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._readers = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.stdout += line
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
            async with self._changed:
                self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr += line

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    async def wait_for_event(
        self, event: str, within: float = 10.0, count: int = 1
    ) -> dict[str, Any]:
        await self.wait_for(
            lambda: len(self.named(event)) >= count, within, f"{event!r} (x{count})"
        )
        return self.named(event)[count - 1]

    async def wait_for(self, predicate: Callable[[], bool], within: float, what: str) -> None:
        """Wait until ``predicate()`` holds, re-checked at each new stdout line."""
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {within}s; stdout:\n{self.stdout.decode()}"
                f"\nstderr:\n{self.stderr.decode()}"
            ) from None

    async def wait_exit(self, within: float) -> int:
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return code

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    @property
    def log_file(self) -> Path:
        return self.log_dir / "coder-agent.log"

    async def kill(self) -> None:
        # The whole group: under ``unshare --fork`` the namespace's PID 1 and the agent
        # would outlive a killed ``unshare`` (and keep the stdout pipe open).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def daemon_env(url: str, token: str, log_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP)}
    env.update(
        CODER_AGENT_URL=url,
        CODER_AGENT_TOKEN=token,
        CODER_AGENT_LOG_DIR=str(log_dir),
        HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


SpawnDaemon = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def spawn_daemon(tmp_path: Path) -> AsyncIterator[SpawnDaemon]:
    """``await spawn_daemon(url, token, *argv, prefix=[...], **env)`` starts a daemon."""
    started: list[Daemon] = []

    async def spawn(
        url: str, token: str, *argv: str, prefix: tuple[str, ...] = (), **env: str
    ) -> Daemon:
        index = len(started)
        log_dir = tmp_path / f"logs{index}"
        home = tmp_path / f"home{index}"
        home.mkdir()
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            "-m",
            "wsagent",
            "agent",
            *argv,
            env=daemon_env(url, token, log_dir, home, **env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        daemon = Daemon(proc, log_dir, home)
        started.append(daemon)
        return daemon

    yield spawn
    for daemon in started:
        await daemon.kill()


@pytest.fixture
def agent_token() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def fake_cp(agent_token: str) -> AsyncIterator[FakeControlPlane]:
    async with FakeControlPlane(agent_token) as server:
        yield server


__all__ = ["Daemon", "SpawnDaemon", "daemon_env"]


@pytest.fixture
def unused_port_url() -> str:
    """A loopback URL nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test():  # type: ignore[no-untyped-def]
    """Unclosed sockets warn when collected; collect now, so a leak is blamed on the test
    that made it rather than on whichever test happens to run next."""
    yield
    import gc

    gc.collect()


METADATA_PATH = "/api/v2/workspaceagents/me/metadata"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``url = await serve(handler, *paths)``: the handler answers the metadata path and
    ``paths``."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, *paths: str) -> str:
        app = web.Application()
        for path in (METADATA_PATH, *paths):
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for runner in runners:
        await runner.cleanup()
