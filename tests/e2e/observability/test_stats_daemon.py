"""Stats from the real daemon: an idle agent posts once (to learn the interval), then
nothing, however short the interval (Coder posts every empty window)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import agent_env
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e


async def test_an_idle_agent_posts_stats_once(start_agent: Any, tmp_path: Path) -> None:
    token = str(uuid.uuid4())
    interval_ns = 200_000_000  # 0.2 s: ten empty windows in the two seconds watched below
    async with FakeControlPlane(token, report_interval_ns=interval_ns) as cp:
        await start_agent(agent_env(cp.url, token, tmp_path / "logs"))
        await cp.wait_for(lambda: len(cp.of("POST", "/me/report-stats")) >= 1, within=15)
        first = cp.of("POST", "/me/report-stats")[0].body
        assert first["rx_bytes"] == 0 and first["tx_bytes"] == 0
        await asyncio.sleep(2.0)  # an absence can only be seen over time
        assert len(cp.of("POST", "/me/report-stats")) == 1
