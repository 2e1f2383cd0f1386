"""The control plane's Prometheus endpoint, with a real agent and a relayed terminal."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from agent.sdk.promtext import MAX_LABEL_SETS, Histogram
from agent.sdk.pty import ReconnectingPTYRequest
from controlplane.cli import server_config_from_args, server_parser
from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

SERVER_SERIES = {
    "wsagent_server_connected_agents",
    "wsagent_server_http_request_duration_seconds",
    "wsagent_server_pty_sessions",
    "wsagent_server_http_requests_in_flight",
    "wsagent_server_websocket_requests",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return names, samples


def test_cli_default_on_and_empty_disables() -> None:
    parser = server_parser()
    config = server_config_from_args(parser.parse_args([]))
    assert config.metrics_address == ("127.0.0.1", 2114)
    assert (
        server_config_from_args(parser.parse_args(["--metrics-address", ""])).metrics_address
        is None
    )
    with pytest.raises(SystemExit):
        server_config_from_args(parser.parse_args(["--metrics-address", "nope"]))


def test_histogram_caps_label_sets() -> None:
    h = Histogram("h", "help", overflow_labels=(("route", "other"),))
    for i in range(MAX_LABEL_SETS + 50):
        h.observe((("route", str(i)),), 0.01)
    family = h.family()
    counts = [s for s in family.samples if s[0] == "_count"]
    assert len(counts) == MAX_LABEL_SETS + 1
    assert sum(value for _, _, value in counts) == MAX_LABEL_SETS + 50


async def test_scrape_has_agents_routes_and_relayed_sessions(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    tmp_path: Path,
) -> None:
    cp = await make_control_plane(metrics_address=("127.0.0.1", 0))
    assert cp.server is not None and cp.server.metrics_runner is not None
    metrics_port = cp.server.metrics_runner.addresses[0][1]
    _, user_token = await cp.create_user("alice")
    agent_id, agent_token = (await cp.create_workspace("alice", "ws"))["main"]
    home = tmp_path / "home"
    home.mkdir()
    (home / ".hushlogin").touch()
    env = agent_env(
        cp.url,
        agent_token,
        tmp_path / "logs",
        HOME=str(home),
        CODER_AGENT_METRICS_ADDRESS="127.0.0.1:0",
    )
    agent = await start_agent(env)
    await agent.wait_for_event("agent.connected", timeout=15)
    agent_metrics = (await agent.wait_for_event("metrics.listening"))["address"]

    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:

        async def scrape() -> tuple[set[str], Samples]:
            response = await client.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            return parse(response.text)

        async def agent_connected() -> bool:
            _, got = await scrape()
            return got.get(("wsagent_server_connected_agents", frozenset())) == 1

        await poll_until(agent_connected, timeout=10)

        query = urlencode({"reconnect": str(uuid.uuid4())})
        base = cp.url.replace("http://", "ws://")
        async with connect(
            f"{base}/api/v2/workspaceagents/{agent_id}/pty?{query}",
            additional_headers={"Coder-Session-Token": user_token},
            open_timeout=10,
            close_timeout=2,
        ) as ws:
            await ws.send(ReconnectingPTYRequest("echo metrics-ok\n", 24, 80).encode())

            async def relaying() -> bool:
                _, got = await scrape()
                return got.get(("wsagent_server_pty_sessions", frozenset())) == 1

            await poll_until(relaying, timeout=10)

            # The agent's side of the same session: one PTY, bytes relayed both ways.
            async def agent_relaying() -> bool:
                response = await client.get(f"http://{agent_metrics}/metrics")
                _, got = parse(response.text)
                rx = ("wsagent_agent_relayed_bytes_total", frozenset({("direction", "rx")}))
                tx = ("wsagent_agent_relayed_bytes_total", frozenset({("direction", "tx")}))
                sessions = got.get(("wsagent_agent_pty_sessions", frozenset()))
                return sessions == 1 and got.get(rx, 0) > 0 and got.get(tx, 0) > 0

            await poll_until(agent_relaying, timeout=10)
        # Raw URLs with ids must not become labels: a 404 lands in "unmatched".
        await client.get(f"{cp.url}/api/v2/no-such-route/{uuid.uuid4()}")

        async def relay_ended() -> tuple[set[str], Samples] | None:
            names, got = await scrape()
            done = got.get(("wsagent_server_pty_sessions_total", frozenset())) == 1
            return (names, got) if done else None

        names, got = await poll_until(relay_ended, timeout=10)

    assert names >= SERVER_SERIES, SERVER_SERIES - names
    assert got[("wsagent_server_pty_sessions", frozenset())] == 0
    routes = {dict(labels).get("route") for name, labels in got if name.endswith("_count")}
    assert "/api/v2/workspaceagents/me/manifest" in routes or any(
        r and r.startswith("/api/v2/workspaceagents/me/") for r in routes
    ), routes
    assert "unmatched" in routes
    assert not any(r and agent_id in r for r in routes), routes
    assert await agent.terminate() == 0


async def test_busy_metrics_port_does_not_stop_the_server(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cp = await make_control_plane(metrics_address=busy.getsockname())
        assert cp.server is not None and cp.server.metrics_runner is None
        async with cp.http() as client:
            assert (await client.get("/healthz")).status_code == 200
