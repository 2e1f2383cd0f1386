"""The load generator at a small size (bench/load_agents.py): correctness only.

50 simulated agents against a real ``wsagent server`` process for a few seconds: every
request succeeds, and the API reports every agent connected and ready. No latency figure is
asserted: CI machines are shared and timings there mean nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_agents", REPO / "bench" / "load_agents.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("load_agents", module)
    spec.loader.exec_module(module)
    return module


async def test_fifty_agents_all_connected_without_errors() -> None:
    bench = load_bench()
    args = bench.parse_args(
        [
            "--steps=50",
            "--step-seconds=3",
            "--stats-interval=1",
            "--health-interval=1",
            "--metadata-interval=1",
            "--spawn-rate=100",
            "--max-seconds=60",
        ]
    )
    steps, _, samples = await bench.run_load(args)
    (step,) = steps
    assert step.error_count == 0, samples
    assert (step.connected, step.ready) == (50, 50)
    # Every kind of request the agents make went through at least once.
    for endpoint in (
        "GET metadata",
        "POST startup",
        "POST report-lifecycle",
        "WS coordinate",
        "POST report-stats",
        "POST app-health",
        "POST metadata",
    ):
        assert step.latencies[endpoint], endpoint
    assert len(step.latencies["WS coordinate"]) == 50
    # 50 agents x 2 keys a second: ~100 posts/s, coalesced to about one write a second.
    assert step.metadata_posts >= 100
    assert step.metadata_writes <= step.window_seconds + 2
