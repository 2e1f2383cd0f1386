"""The agent's Prometheus endpoint: scraped from the real daemon against the real server."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import load_config
from agent.errors import ConfigError
from agent.metrics import respond
from agent.sdk.settings import parse_listen_address
from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until

pytestmark = pytest.mark.e2e

AGENT_SERIES = {
    "wsagent_agent_info",
    "wsagent_agent_connected",
    "wsagent_agent_connection_state",
    "wsagent_agent_connection_attempts",  # the parser drops a counter's _total suffix
    "wsagent_agent_reconnects",
    "wsagent_agent_token_exchanges",
    "wsagent_agent_lifecycle_state",
    "wsagent_agent_apps",
    "wsagent_agent_pty_sessions",
    "wsagent_agent_relayed_bytes",
    "wsagent_agent_resident_memory_bytes",
    "wsagent_agent_startup_log_lines",
    "wsagent_agent_metadata_runs",
}

StartAgent = Callable[..., Awaitable[AgentProcess]]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_listen_address_parsing() -> None:
    assert parse_listen_address("127.0.0.1:2113", "X") == ("127.0.0.1", 2113)
    assert parse_listen_address("[::1]:9", "X") == ("::1", 9)
    for off in ("", "off", " OFF "):
        assert parse_listen_address(off, "X") is None
    for bad in ("2113", "host:", "h:99999", ":80"):
        with pytest.raises(ConfigError):
            parse_listen_address(bad, "X")


def test_agent_default_is_on_at_loopback_2113() -> None:
    env = {"CODER_AGENT_URL": "http://127.0.0.1:1", "CODER_AGENT_TOKEN": "t"}
    assert load_config([], env).metrics_address == ("127.0.0.1", 2113)
    assert load_config([], {**env, "CODER_AGENT_METRICS_ADDRESS": ""}).metrics_address is None
    with pytest.raises(ConfigError, match="CODER_AGENT_METRICS_ADDRESS"):
        load_config([], {**env, "CODER_AGENT_METRICS_ADDRESS": "2113"})


def test_responder_routes() -> None:
    assert respond(b"GET /metrics HTTP/1.1\r\n", lambda: "x 1\n").endswith(b"\r\n\r\nx 1\n")
    assert respond(b"GET /nope HTTP/1.1\r\n", lambda: "").startswith(b"HTTP/1.1 404")
    assert respond(b"POST /metrics HTTP/1.1\r\n", lambda: "").startswith(b"HTTP/1.1 405")
    assert respond(b"garbage\r\n", lambda: "").startswith(b"HTTP/1.1 400")
    head = respond(b"HEAD /metrics HTTP/1.1\r\n", lambda: "x 1\n")
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 4" in head


async def _connected_agent(
    control_plane: ControlPlane, start_agent: StartAgent, tmp_path: Path, address: str
) -> AgentProcess:
    await control_plane.create_user("alice")
    # One app whose health check is the server's own /healthz: it turns healthy.
    health = {"url": f"{control_plane.url}/healthz", "interval": 1, "threshold": 1}
    app = {"slug": "web", "url": control_plane.url, "healthcheck": health}
    agents = await control_plane.create_workspace("alice", "ws", [{"name": "main", "apps": [app]}])
    _, token = agents["main"]
    env = agent_env(
        control_plane.url, token, tmp_path / "logs", CODER_AGENT_METRICS_ADDRESS=address
    )
    agent = await start_agent(env)
    await agent.wait_for_event("agent.connected", timeout=15)
    return agent


async def test_scrape_parses_and_has_the_series(
    control_plane: ControlPlane, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await _connected_agent(control_plane, start_agent, tmp_path, "127.0.0.1:0")
    listening = await agent.wait_for_event("metrics.listening", timeout=10)
    url = f"http://{listening['address']}/metrics"
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:

        async def scrape() -> str | None:
            response = await client.get(url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = response.text
            got = samples(text)
            # The first scrape may precede the connection's bookkeeping: wait for it.
            connected = got.get(("wsagent_agent_connected", frozenset())) == 1
            healthy = got.get(("wsagent_agent_apps", frozenset({("health", "healthy")}))) == 1
            ready = got.get(("wsagent_agent_lifecycle_state", frozenset({("state", "ready")})))
            return text if connected and healthy and ready == 1 else None

        text = await poll_until(scrape, timeout=10)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert names >= AGENT_SERIES, AGENT_SERIES - names
    got = samples(text)
    assert got[("wsagent_agent_connection_state", frozenset({("state", "connected")}))] == 1
    assert got[("wsagent_agent_connection_attempts_total", frozenset())] >= 1
    assert got[("wsagent_agent_resident_memory_bytes", frozenset())] > 10 * (1 << 20)
    assert got[("wsagent_agent_token_exchanges_total", frozenset({("result", "ok")}))] == 0
    assert sum(v for (n, _), v in got.items() if n == "wsagent_agent_lifecycle_state") == 1
    assert await agent.terminate() == 0


async def test_busy_port_is_one_warning_and_the_agent_runs(
    control_plane: ControlPlane, start_agent: StartAgent, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent = await _connected_agent(control_plane, start_agent, tmp_path, f"127.0.0.1:{port}")
        await agent.wait_for_event("metrics.listen_failed", timeout=10)
        assert len(agent.find("metrics.listen_failed")) == 1
        assert agent.proc.returncode is None
    assert await agent.terminate() == 0


async def test_off_means_no_listener(
    control_plane: ControlPlane, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await _connected_agent(control_plane, start_agent, tmp_path, "off")
    # Wiring ran before the connection: a listener would have logged by now.
    assert not agent.find("metrics.listening") and not agent.find("metrics.listen_failed")
    assert await agent.terminate() == 0
