"""Memory cost of the metrics endpoint: own text rendering vs prometheus_client.

    .venv/bin/python bench/metrics_cost.py [--runs 5]

Each variant runs in a fresh interpreter that first imports what an idle agent has loaded
(asyncio, httpx, websockets, structlog and the agent's modules): that is the baseline,
measured in the same process. Then it builds the agent's eleven series and renders one
scrape, either with agent.metrics (own renderer) or with prometheus_client (a registry with
the same gauges and counters, ``generate_latest``). The figure is the RSS growth
(/proc/self/statm) over the baseline; median of ``--runs``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PRELUDE = """
import os, sys
sys.path.insert(0, {repo!r})
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
import asyncio, ssl, httpx, websockets, structlog
import agent.compose, agent.client, agent.coordinator
base = rss()
"""

OWN = """
from agent.metrics import AgentMetrics
m = AgentMetrics()
for i in range(10):
    m.add_gauge(f'wsagent_agent_series_{i}', 'help', lambda: 1)
text = m.render()
"""

CLIENT = """
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
r = CollectorRegistry()
for i in range(5):
    Gauge(f'wsagent_agent_series_{i}', 'help', registry=r).set(1)
    Counter(f'wsagent_agent_counter_{i}', 'help', ['result'], registry=r).labels('ok').inc()
text = generate_latest(r)
"""

EPILOGUE = "\nprint(base, rss() - base)\n"


def measure(body: str) -> tuple[int, int]:
    code = PRELUDE.format(repo=str(REPO)) + body + EPILOGUE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, delta = out.stdout.split()
    return int(base), int(delta)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    kib = 1024
    for name, body in (("own renderer (agent.metrics)", OWN), ("prometheus_client", CLIENT)):
        results = [measure(body) for _ in range(runs)]
        base = statistics.median(b for b, _ in results) / kib / kib
        delta = statistics.median(d for _, d in results) / kib
        print(f"{name:32s} +{delta:7.0f} KiB over a baseline of {base:.1f} MiB")


if __name__ == "__main__":
    main()
