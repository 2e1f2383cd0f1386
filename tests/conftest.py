"""Shared fixtures: the real control plane in-process on 127.0.0.1, and the real daemon as
a subprocess. Nothing here is a mock: tests talk to both over real sockets."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from controlplane.admin import agent_spec, create_user, create_workspace
from controlplane.config import ServerConfig
from controlplane.server import RunningServer, start_server
from controlplane.store.records import UserRecord
from tests.pgserver import PgTemplate, PgUnavailable, start_template_cluster

REPO = Path(__file__).resolve().parent.parent

# A test that starts a process or a server without the e2e mark fails (tests/e2e_guard.py).
pytest_plugins = ["tests.e2e_guard"]


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _collect_leaks_in_their_own_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """An end-to-end test that leaves a socket to the garbage collector fails itself.

    Otherwise the ResourceWarning surfaces whenever the collector next runs, inside some
    other test; collecting at teardown pins it on the test that leaked."""
    yield
    if request.node.get_closest_marker("e2e") is not None:
        gc.collect()


async def poll_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() >= deadline:
            raise AssertionError(
                message or f"condition not met within {timeout}s (last value {last!r})"
            )
        await asyncio.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[Any]]:
    """``await wait_until(predicate, timeout)``: see :func:`poll_until`."""
    return poll_until


class ControlPlane:
    """A real control plane on 127.0.0.1 with a temporary SQLite data directory."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server: RunningServer | None = None
        self._users: dict[str, UserRecord] = {}

    async def start(self) -> None:
        self.server = await start_server(self.config)
        # Keep the same port across restarts so agents reconnect to the same URL.
        self.config.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def url(self) -> str:
        return self.config.resolved_access_url()

    @property
    def store(self) -> Any:
        assert self.server is not None, "control plane is stopped"
        return self.server.store

    @property
    def app(self) -> Any:
        assert self.server is not None
        return self.server.app

    async def create_user(self, name: str) -> tuple[UserRecord, str]:
        user, token = await create_user(self.store, name, f"{name}@example.com")
        self._users[name] = user
        return user, token

    async def create_workspace(
        self, owner: str, name: str, agents: list[dict[str, Any]] | None = None
    ) -> dict[str, tuple[str, str]]:
        specs = [agent_spec(a, f"agents[{i}]") for i, a in enumerate(agents or [{"name": "main"}])]
        _, created = await create_workspace(self.store, owner, name, specs)
        return {c.record.name: (c.record.id, c.token) for c in created}

    def http(self, token: str = "") -> httpx.AsyncClient:
        headers = {"Coder-Session-Token": token} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10.0)

    async def get_agent_json(self, agent_id: str, user_token: str) -> dict[str, Any]:
        async with self.http(user_token) as client:
            response = await client.get(f"/api/v2/workspaceagents/{agent_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def store_backend() -> str:
    """Which store the control planes of a test use; tests/controlplane runs both."""
    return "sqlite"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgTemplate]:
    """One throwaway PostgreSQL cluster per test session (per xdist worker), started only
    when a test asks for PostgreSQL; each test gets fresh databases from its template."""
    try:
        template = start_template_cluster()
    except PgUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI installs PostgreSQL (scripts/setup): never skip there
        pytest.skip(str(exc))
    try:
        yield template
    finally:
        template.cluster.destroy()


@pytest.fixture
def _pg(request: pytest.FixtureRequest, store_backend: str) -> PgTemplate | None:
    if store_backend != "postgres":
        return None
    template: PgTemplate = request.getfixturevalue("pg_cluster")
    return template


@pytest.fixture
async def make_database(_pg: PgTemplate | None) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """``await make_database()``: a new empty, migrated PostgreSQL database's URL, or ""
    when the test runs on SQLite. Dropped after the test."""
    created: list[str] = []

    async def make() -> str:
        if _pg is None:
            return ""
        name = await _pg.create_database()
        created.append(name)
        return _pg.cluster.url(name)

    yield make
    if _pg is not None:
        for name in created:
            await _pg.drop_database(name)


@pytest.fixture
async def make_control_plane(
    tmp_path: Path, make_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[Callable[..., Awaitable[ControlPlane]]]:
    planes: list[ControlPlane] = []

    async def make(**overrides: Any) -> ControlPlane:
        if "database_url" not in overrides:
            overrides["database_url"] = await make_database()
        config = ServerConfig(
            data_dir=tmp_path / f"server{len(planes)}",
            host="127.0.0.1",
            port=0,
            stats_report_interval=overrides.pop("stats_interval", 600.0),
            agent_heartbeat_interval=overrides.pop("heartbeat_interval", 1.0),
        )
        config = replace(config, **overrides)
        plane = ControlPlane(config)
        await plane.start()
        planes.append(plane)
        return plane

    yield make
    for plane in planes:
        await plane.stop()


@pytest.fixture
async def control_plane(make_control_plane: Callable[..., Awaitable[ControlPlane]]) -> ControlPlane:
    return await make_control_plane()


@dataclass
class AgentProcess:
    proc: asyncio.subprocess.Process
    log_dir: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                self._changed.set()
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            if len(self.raw_lines) < 100_000:
                self.raw_lines.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                self._changed.set()

    def find(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for_event(
        self, name: str, timeout: float = 10.0, **fields: Any
    ) -> dict[str, Any]:
        """Wait for a log event (JSON line on stdout) with the given name and fields."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.find(name, **fields)
            if found:
                return found[-1]
            if self.proc.returncode is not None or (
                self._reader is not None and self._reader.done()
            ):
                raise AssertionError(f"agent exited ({self.proc.returncode}) before logging {name}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                tail = "\n".join(self.raw_lines[-20:])
                raise AssertionError(
                    f"agent did not log {name} {fields} within {timeout}s; last lines:\n{tail}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for_new_event(
        self, name: str, after: int, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait for the (after+1)-th occurrence of ``name``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.find(name)) <= after:
            if self.proc.returncode is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode})")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no new {name} within {timeout}s")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.find(name)[after]

    async def terminate(self, timeout: float = 5.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            if self.proc.returncode is None:
                self.kill()
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        return self.proc.returncode if self.proc.returncode is not None else -1

    def kill(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def agent_env(url: str, token: str, log_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
    env.update(
        {
            "CODER_AGENT_URL": url,
            "CODER_AGENT_TOKEN": token,
            "CODER_AGENT_LOG_DIR": str(log_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[AgentProcess]]]:
    started: list[AgentProcess] = []

    async def start(env: dict[str, str], args: list[str] | None = None) -> AgentProcess:
        log_dir = Path(env.get("CODER_AGENT_LOG_DIR") or tmp_path / f"agent{len(started)}-logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
        full_env = {**base, "PYTHONUNBUFFERED": "1", **env, "CODER_AGENT_LOG_DIR": str(log_dir)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wsagent",
            "agent",
            *(args or []),
            env=full_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            cwd=str(REPO),
            limit=1 << 20,
        )
        agent = AgentProcess(proc, log_dir)
        agent.start_reading()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.proc.returncode is None:
            agent.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(agent.proc.wait(), 5)
            except TimeoutError:
                pass
        agent.kill()
        if agent.proc.returncode is None:
            await agent.proc.wait()
        if agent._reader is not None:
            agent._reader.cancel()
            await asyncio.gather(agent._reader, return_exceptions=True)
