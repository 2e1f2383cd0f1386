"""Two ``wsagent server`` processes on one PostgreSQL database behind HAProxy, and the real
agent connected through HAProxy. The user works on the replica that does NOT hold the
agent's socket (terminal, listening ports, client coordinate socket); then the agent's
replica is killed with SIGKILL, PostgreSQL is restarted, and a git-auth credential saved
by another process wakes a ``listen`` on a replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import REPO, AgentProcess, agent_env, poll_until
from tests.e2e.controlplane.cli import cli_env, wsagent
from tests.e2e.terminals.harness import Screen
from tests.pgserver import PgCluster, PgUnavailable, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

AGENTS = "/api/v2/workspaceagents"


def _haproxy() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else ""
    )
    if not found:
        if os.environ.get("CI"):
            raise AssertionError("haproxy is not installed (scripts/setup installs it)")
        pytest.skip("haproxy is not installed")
    return found


@dataclass
class Replica:
    name: str
    port: int
    args: list[str]
    log: Path
    metrics_port: int = 0
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "wsagent",
                "server",
                *self.args,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**cli_env(), "WSAGENT_LOG_LEVEL": "info"},
                cwd=str(REPO),
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def local_agents(self) -> int:
        """Agent sockets this replica holds itself (its Prometheus gauge)."""
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text
        for line in text.splitlines():
            if line.startswith("wsagent_server_connected_agents "):
                return int(float(line.split()[1]))
        raise AssertionError("no connected-agents gauge")

    async def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 10)

    async def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                await self.kill()


@dataclass
class Cluster:
    pg: PgCluster
    replicas: list[Replica]
    lb_port: int
    owner_token: str = ""
    agent_id: str = ""
    agent_token: str = ""
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    async def healthy(self, replica: Replica) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{replica.url}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def agent_json(self, replica: Replica) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(
                f"{replica.url}{AGENTS}/{self.agent_id}",
                headers={"Coder-Session-Token": self.owner_token},
            )
        if response.status_code != 200:
            return {}
        body: dict[str, Any] = response.json()
        return body

    async def connected_on(self, replica: Replica) -> bool:
        return (await self.agent_json(replica)).get("status") == "connected"

    async def pty(self, replica: Replica, reconnect: str, **query: Any) -> Screen:
        q = urlencode({"reconnect": reconnect, **query})
        ws = await connect(
            f"{replica.url.replace('http://', 'ws://')}{AGENTS}/{self.agent_id}/pty?{q}",
            additional_headers={"Coder-Session-Token": self.owner_token},
            compression=None,
            open_timeout=15,
            close_timeout=2,
        )
        return Screen(ws)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    haproxy = _haproxy()
    try:
        pg = PgCluster()
    except PgUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    await asyncio.to_thread(pg.init)
    await asyncio.to_thread(pg.start)
    url = pg.url()
    ports = [free_port(), free_port()]
    metrics = [free_port(), free_port()]
    replicas = [
        Replica(
            f"r{i}",
            port,
            [
                "--address",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(tmp_path / f"r{i}"),
                "--database-url",
                url,
                "--replica-id",
                f"r{i}",
                "--replica-url",
                f"http://127.0.0.1:{port}",
                "--heartbeat-interval",
                "1s",
                "--metrics-address",
                f"127.0.0.1:{metrics[i - 1]}",
            ],
            tmp_path / f"r{i}.log",
            metrics[i - 1],
        )
        for i, port in enumerate(ports, 1)
    ]
    lb_port = free_port()
    config = tmp_path / "haproxy.cfg"
    servers = "\n".join(
        f"    server {r.name} 127.0.0.1:{r.port} check inter 300ms fall 1 rise 2" for r in replicas
    )
    # "first": every new connection goes to r1 while it is up, so the agent's replica is
    # known; WebSockets are tunnels with their own (long) timeout.
    config.write_text(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n"
        "    timeout server 60s\n    timeout tunnel 1h\n"
        f"frontend fe\n    bind 127.0.0.1:{lb_port}\n    default_backend be\n"
        "backend be\n    balance first\n    option httpchk GET /healthz\n"
        f"{servers}\n"
    )
    state = Cluster(pg, replicas, lb_port)
    try:
        for r in replicas:
            await r.start()
        for r in replicas:
            await poll_until(partial(state.healthy, r), timeout=30, message=f"{r.name} down")
        with (tmp_path / "haproxy.log").open("wb") as out:
            state.procs.append(
                await asyncio.create_subprocess_exec(
                    haproxy, "-f", str(config), "-db", stdout=out, stderr=asyncio.subprocess.STDOUT
                )
            )
        # Users and the workspace, through the admin CLI on the same database.
        made = await wsagent("admin", "--database-url", url, "--json", "user", "create", "alice")
        assert made.code == 0, made.stderr
        state.owner_token = made.json["session_token"]
        ws = await wsagent(
            "admin", "--database-url", url, "--json", "workspace", "create",
            "--owner", "alice", "--name", "dev",
        )  # fmt: skip
        assert ws.code == 0, ws.stderr
        agent = ws.json["agents"][0]
        state.agent_id, state.agent_token = agent["agent_id"], agent["token"]
        yield state
    finally:
        for proc in state.procs:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        for r in replicas:
            await r.stop()
        await asyncio.to_thread(pg.destroy)
        for r in replicas:
            if r.log.exists():
                print(
                    f"--- {r.name} log (tail)\n" + "\n".join(r.log.read_text().splitlines()[-40:])
                )


async def test_replicas_behind_haproxy(cluster: Cluster, start_agent: Any, tmp_path: Path) -> None:
    r1, r2 = cluster.replicas
    home = tmp_path / "home"
    home.mkdir()
    (home / ".hushlogin").touch()
    agent: AgentProcess = await start_agent(
        agent_env(
            cluster.lb_url, cluster.agent_token, tmp_path / "agent-logs", HOME=str(home), PS1="$ "
        )
    )
    await poll_until(lambda: cluster.connected_on(r2), timeout=40, message="agent not connected")

    # --- on r2, which does not hold the socket (HAProxy sends everything to r1 first)
    assert (await r1.local_agents(), await r2.local_agents()) == (1, 0)
    reconnect = str(uuid.uuid4())
    first = await cluster.pty(r2, reconnect, command="sh")
    await first.type("echo mark-$((40+2))\r")
    await first.expect(rb"mark-42\r\n", timeout=20)
    await first.ws.close()

    async with httpx.AsyncClient(timeout=20) as client:
        ports = await client.get(
            f"{r2.url}{AGENTS}/{cluster.agent_id}/listening-ports",
            headers={"Coder-Session-Token": cluster.owner_token},
        )
    assert ports.status_code == 200, ports.text
    assert "ports" in ports.json()

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{r2.url}{AGENTS}/{cluster.agent_id}/coordinate",
            headers={"Cookie": f"coder_session_token={cluster.owner_token}"},
        ) as client_ws,
    ):
        message = await client_ws.receive(timeout=20)
        nodes = json.loads(message.data)
        assert isinstance(nodes, list) and nodes and "key" in nodes[0], nodes

    # --- kill -9 the agent's replica: the agent comes back through HAProxy on r2
    await r1.kill()

    async def on_r2() -> bool:
        return await r2.local_agents() == 1

    await poll_until(on_r2, timeout=90, message="the agent did not come back on r2")
    await poll_until(lambda: cluster.connected_on(r2), timeout=30)
    second = await cluster.pty(r2, reconnect)
    await second.expect(rb"mark-42\r\n", timeout=20)  # the same session's scrollback
    await second.ws.close()

    # --- r1 back (same replica id); a git-auth listen on r1 wakes when another process saves
    await r1.start()
    await poll_until(lambda: cluster.healthy(r1), timeout=30)
    url = cluster.pg.url()
    added = await wsagent(
        "admin", "--database-url", url, "gitauth", "add-provider",
        "--id", "github", "--regex", r"github\.com", "--type", "github",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    async with httpx.AsyncClient(timeout=30) as client:
        listen = asyncio.create_task(
            client.get(
                f"{r1.url}{AGENTS}/me/gitauth?url=https://github.com/x/y&listen",
                headers={"Coder-Session-Token": cluster.agent_token},
            )
        )
        await asyncio.sleep(0)  # the listen is on its way before the credential is saved
        saved = await wsagent(
            "admin", "--database-url", url, "gitauth", "set-credential",
            "--provider", "github", "--user", "alice", "--token", "fresh",
        )  # fmt: skip
        assert saved.code == 0, saved.stderr
        response = await asyncio.wait_for(listen, 20)
    assert response.status_code == 200 and response.json()["username"] == "fresh"

    # --- restart PostgreSQL: nothing lost, nothing crashes, routing works again
    await asyncio.to_thread(cluster.pg.restart)
    await poll_until(lambda: cluster.connected_on(r1), timeout=40, message="r1 did not recover")
    await poll_until(lambda: cluster.connected_on(r2), timeout=40, message="r2 did not recover")

    # PostgreSQL keeps no NOTIFY for a channel nobody listens on, so a request r1 routes
    # before r2's bus has re-LISTENed is lost (the asker gets its timeout's error). Routing
    # is back once a routed request comes back; each try waits out its own 5 s at most.
    async def routed_ports_answer() -> bool:
        async with httpx.AsyncClient(timeout=20) as client:
            response = await client.get(
                f"{r1.url}{AGENTS}/{cluster.agent_id}/listening-ports",
                headers={"Coder-Session-Token": cluster.owner_token},
            )
        return response.status_code == 200

    await poll_until(routed_ports_answer, timeout=40, message="routing did not come back")
    third = await cluster.pty(r1, reconnect)  # r1 routes through the bus to r2's socket
    await third.expect(rb"mark-42\r\n", timeout=30)
    await third.type("echo after-$((1+1))\r")
    await third.expect(rb"after-2\r\n", timeout=20)
    await third.ws.close()
    assert r1.alive() and r2.alive() and agent.proc.returncode is None
    assert (await r1.local_agents(), await r2.local_agents()) == (0, 1)
