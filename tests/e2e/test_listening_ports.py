"""Listening ports: asked of the real agent through the real control plane."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from agent.ports import Listener, parse_proc_net_tcp, unique_ports
from tests.conftest import ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1
   1: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1
   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 999 1
   3: 00000000:0007 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1
"""
ZERO6 = "0" * 32
PROC_NET_TCP6 = (
    "  sl  local_address remote_address st ...\n"
    f"   0: {ZERO6}:1F91 {ZERO6}:0000 0A 00000000:00000000 00:00000000 00000000  1000  0 777 1\n"
)


def test_parse_keeps_only_listeners_of_both_families() -> None:
    """LISTEN rows of tcp and tcp6 are kept; established ones and ports < 9 are not."""
    listeners = parse_proc_net_tcp(PROC_NET_TCP) + parse_proc_net_tcp(PROC_NET_TCP6)
    assert Listener(8080, 4242) in listeners and Listener(8081, 777) in listeners
    assert all(listener.inode != 999 for listener in listeners)
    assert set(unique_ports(listeners)) == {8080, 22, 8081}


def test_parse_ignores_garbage() -> None:
    assert parse_proc_net_tcp("header\nnot a row\n 0: x:y z 0A a b c d e f\n") == []


async def _ports(cp: ControlPlane, agent_id: str, token: str) -> tuple[int, Any]:
    async with cp.http(token) as client:
        response = await client.get(f"/api/v2/workspaceagents/{agent_id}/listening-ports")
    return response.status_code, response.json()


def _listen(family: socket.AddressFamily, host: str, port: int = 0) -> socket.socket | None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:  # a fixed port someone else holds: that case is simply not checked
        sock.close()
        return None
    sock.listen()
    return sock


async def test_listening_ports_end_to_end(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Any
) -> None:
    """New IPv4 and IPv6 listeners are listed once, with this process's name, within the
    1 s cache; filtered ports (ignore list, app ports) never appear; a closed one
    disappears; another user gets 404; the server answers fast on loopback."""
    app_sock = _listen(socket.AF_INET, "127.0.0.1")
    assert app_sock is not None
    app_port = app_sock.getsockname()[1]
    _, token = await control_plane.create_user("alice")
    _, other_token = await control_plane.create_user("mallory")
    agents = await control_plane.create_workspace(
        "alice",
        "dev",
        [{"name": "main", "apps": [{"slug": "web", "url": f"http://127.0.0.1:{app_port}/"}]}],
    )
    agent_id, agent_token = agents["main"]

    status, body = await _ports(control_plane, agent_id, token)
    assert status == 400 and "connected" in body["message"]

    await start_agent(agent_env(control_plane.url, agent_token, tmp_path / "logs"))
    await poll_until(
        lambda: _connected(control_plane, agent_id, token), timeout=15, message="never connected"
    )
    status, _ = await _ports(control_plane, agent_id, token)  # fills the agent's 1 s cache
    assert status == 200
    ignored = [s for s in (_listen(socket.AF_INET, "127.0.0.1", p) for p in (27018, 28017)) if s]
    v4 = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    v6_sock = _listen(socket.AF_INET6, "::1")
    assert v6_sock is not None
    port4 = v4.sockets[0].getsockname()[1]
    port6 = v6_sock.getsockname()[1]
    opened = time.monotonic()
    me = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    try:
        seen: dict[str, Any] = {}

        async def both_listed() -> bool:
            code, data = await _ports(control_plane, agent_id, token)
            seen["body"] = data
            listed = [p["port"] for p in data["ports"]] if code == 200 else []
            return port4 in listed and port6 in listed

        await poll_until(both_listed, timeout=5, message="new listeners never listed")
        # The agent caches for 1 s, so a new listener shows within that plus one round trip.
        assert time.monotonic() - opened < 2.0
        body = seen["body"]
        listed = [p["port"] for p in body["ports"]]
        assert listed.count(port4) == 1 and listed.count(port6) == 1
        server_port = int(control_plane.url.rsplit(":", 1)[1])
        assert server_port in listed
        for port in (port4, port6):
            entry = next(p for p in body["ports"] if p["port"] == port)
            assert entry == {"process_name": me, "network": "tcp", "port": port}
        assert all(p["port"] >= 9 for p in body["ports"])
        assert app_port not in listed  # used by an app
        assert not {s.getsockname()[1] for s in ignored} & set(listed)  # Coder's ignore list

        status, _ = await _ports(control_plane, agent_id, other_token)
        assert status == 404

        # Answer time on loopback (the goal is 100 ms; docs/benchmarks.md has the measured
        # figure). The median of seven, under ten times the goal: each answer may scan
        # /proc afresh, and a median of 0.52 s was seen at a load of 14 on 2 cores, while
        # an answer that waits on a timer or a timeout takes seconds.
        took = []
        for _ in range(7):
            started = time.monotonic()
            status, _ = await _ports(control_plane, agent_id, token)
            took.append(time.monotonic() - started)
        assert status == 200 and sorted(took)[3] < 1.0, took
    finally:
        v4.close()
        await v4.wait_closed()
        v6_sock.close()
        app_sock.close()
        for sock in ignored:
            sock.close()

    async def gone() -> bool:
        code, data = await _ports(control_plane, agent_id, token)
        listed = [p["port"] for p in data["ports"]] if code == 200 else [port4]
        return port4 not in listed and port6 not in listed

    await poll_until(gone, timeout=5, message="closed listeners still listed")


async def _connected(cp: ControlPlane, agent_id: str, token: str) -> bool:
    status: str = (await cp.get_agent_json(agent_id, token))["status"]
    return status == "connected"


def test_server_filters_ignored_app_and_low_ports() -> None:
    from agent.sdk.extensions import ListeningPortsResponse
    from agent.sdk.workspaceagents import ListeningPort
    from controlplane.ports import app_ports, filter_ports

    reply = ListeningPortsResponse(
        "r",
        tuple(ListeningPort("p", "tcp", n) for n in (7, 22, 5432, 8080, 3000, 9000)),
    )
    used = app_ports(["http://localhost:8080/", "not a url", "http://[::1]:bad/"])
    assert [p.port for p in filter_ports(reply, used).ports] == [3000, 9000]
