"""The server process runs with the collector tuned for many agents, and shows its pauses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.collector import THRESHOLDS
from tests.e2e.controlplane.test_durability import drain_output, start_server_process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


async def metrics_address(proc: asyncio.subprocess.Process) -> str:
    """The metrics endpoint's address, from the ``metrics.listening`` line that follows
    ``server.listening``."""
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while raw := await proc.stdout.readline():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("event") == "metrics.listening":
                return str(event["address"])
    raise AssertionError("the server exited before its metrics endpoint listened")


async def test_server_process_tunes_the_collector_and_counts_its_pauses(
    tmp_path: Path,
) -> None:
    proc, url = await start_server_process(tmp_path / "data", "--metrics-address", "127.0.0.1:0")
    try:
        address = await metrics_address(proc)
        drain_output(proc)
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(50):
                (await client.get(f"{url}/healthz")).raise_for_status()
            page = await client.get(f"http://{address}/metrics")
        page.raise_for_status()
        samples = {
            (s.name, s.labels.get("generation")): s.value
            for family in text_string_to_metric_families(page.text)
            for s in family.samples
        }
        thresholds = [samples[("wsagent_server_gc_threshold", str(g))] for g in range(3)]
        assert thresholds == list(THRESHOLDS)
        for generation in ("0", "1", "2"):
            assert samples[("wsagent_server_gc_collections_total", generation)] >= 0
            assert samples[("wsagent_server_gc_pause_seconds_total", generation)] >= 0
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
