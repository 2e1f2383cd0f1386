"""Agent counters behind the metrics, driven in-process against a refused port."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.compose import compose
from agent.config import AgentConfig
from agent.connection import STATE_CONNECTED
from agent.errors import WsagentError
from tests.conftest import poll_until

pytestmark = pytest.mark.e2e


def _refused_url() -> str:
    # A port that was just free: connections to it are refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_attempts_and_token_exchanges_are_counted(tmp_path: Path) -> None:
    config = AgentConfig(
        url=_refused_url(),
        auth="aws-instance-identity",
        token="",
        log_dir=tmp_path,
        reconnect_max_delay=0.05,
        metrics_address=("127.0.0.1", 0),
    )
    calls = 0

    async def exchange() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise WsagentError("metadata service down")
        return "exchanged-token"

    agent = compose(config, environ={}, token_exchange=exchange)
    connection = agent.connection
    metrics = agent.metrics
    assert metrics is not None
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop))
    try:
        await poll_until(lambda: connection.attempts_total >= 3, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 5)
        await agent.shutdown(1.0)
    assert connection.token_exchange_failures_total == 1
    assert connection.token_exchanges_total == calls - 1 >= 2
    assert connection.connections_total == 0
    assert connection.connection_state != STATE_CONNECTED

    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.render())
        for s in f.samples
    }
    assert got[("wsagent_agent_token_exchanges_total", (("result", "error"),))] == 1
    assert got[("wsagent_agent_connected", ())] == 0
    assert got[("wsagent_agent_reconnects_total", ())] == 0
    assert got[("wsagent_agent_connection_attempts_total", ())] == connection.attempts_total
