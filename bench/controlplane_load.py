"""Control-plane load: requests/second for ``POST /me/report-stats`` and
``GET /me/metadata`` beside ``GET /healthz`` (the same aiohttp stack with no auth and no
store), and the server's memory per connected agent.

    .venv/bin/python bench/controlplane_load.py [--seconds 3] [--rounds 3] [--concurrency 32]
                                                [--agents 200]

* The server is a real ``wsagent server`` process (SQLite in a temp dir) on loopback; this
  process is the load generator (aiohttp client, keep-alive, ``--concurrency`` requests
  in flight). On 2 cores each side gets about one core: the server's and the generator's
  CPU use during each phase are printed beside the rate, so a figure bound by the
  generator (client near 100 %, server well below) shows as such. The server's CPU time
  per request is printed too: unlike req/s it barely moves when other processes compete
  for the two cores.
* Each endpoint runs ``--rounds`` rounds of ``--seconds`` (at most ``--max-requests``),
  interleaved with the others, each after a short warm-up; the median round is printed.
  report-stats posts non-zero windows, so every request is a committed SQLite write.
* Memory: VmRSS of the server before and after ``--agents`` agents each open their
  coordinate socket and send one node; the delta divided by the count is the cost of one
  connected agent. Baseline: the server's RSS with no agent connected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ME = "/api/v2/workspaceagents/me"
MIB = 1 << 20


@dataclass
class Phase:
    name: str
    requests: int
    errors: int
    seconds: float
    server_cpu: float  # CPU seconds the server used during the phase
    client_cpu: float  # CPU seconds this load generator used
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def row(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        cpu = 100 * self.server_cpu / self.seconds
        client = 100 * self.client_cpu / self.seconds
        per_request = 1e6 * self.server_cpu / max(1, self.requests)
        return (
            f"{self.name:<24} {self.rps:>7.0f} req/s  p50 {p50:5.2f} ms  p99 {p99:6.2f} ms"
            f"  server {per_request:4.0f} us CPU/req"
            f"  CPU server {cpu:3.0f} % client {client:3.0f} %  errors {self.errors}"
        )


def median_phase(rounds: list[Phase]) -> Phase:
    """The round with the median rate (its latencies and CPU figures come with it)."""
    return sorted(rounds, key=lambda p: p.rps)[len(rounds) // 2]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime, all threads


async def prepare(data_dir: Path, agents: int) -> tuple[str, list[str]]:
    """A user, and one workspace per agent; returns (user token, agent tokens)."""
    from controlplane.admin import agent_spec, create_user, create_workspace
    from controlplane.store.sqlite import SQLiteStore

    store = await SQLiteStore.open(data_dir)
    try:
        _, user_token = await create_user(store, "bench")
        tokens = []
        spec = agent_spec(
            {
                "name": "main",
                "startup_script": "true",
                "env": {"A": "1"},
                "apps": [{"slug": "web", "healthcheck": {"url": "http://localhost:1/"}}],
            }
        )
        for i in range(agents):
            _, created = await create_workspace(store, "bench", f"ws{i}", [spec])
            tokens.append(created[0].token)
    finally:
        await store.close()
    return user_token, tokens


async def start_server(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "WSAGENT_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["WSAGENT_LOG_LEVEL"] = "warning"  # per-request logs would measure the logger
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "server",
        "--data-dir",
        str(data_dir),
        "--address",
        "127.0.0.1:0",
        "--stats-interval",
        "600s",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=str(REPO),
    )
    # The port is only in the server.listening line, which is info level: find it by
    # polling the process's listening sockets instead.
    port = await asyncio.wait_for(listening_port(proc.pid), 20)
    return proc, f"http://127.0.0.1:{port}"


async def listening_port(pid: int) -> int:
    inodes: set[str] = set()
    while True:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (FileNotFoundError, ProcessLookupError):
            raise RuntimeError("server exited") from None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                return int(parts[1].split(":")[1], 16)
        await asyncio.sleep(0.05)


async def run_phase(
    name: str,
    session: aiohttp.ClientSession,
    pid: int,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any,
    seconds: float,
    concurrency: int,
    max_requests: int,
) -> Phase:
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers = {**headers, "Content-Type": "application/json"}

    async def one() -> bool:
        async with session.request(method, url, data=data, headers=headers) as response:
            await response.read()
            return response.status < 300

    # Warm-up: connections opened, code paths hot.
    await asyncio.gather(*(one() for _ in range(concurrency * 4)))
    latencies: list[float] = []
    counts = [0, 0]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker() -> None:
        while loop.time() < deadline and counts[0] + counts[1] < max_requests:
            started = time.perf_counter()
            ok = await one()
            latencies.append(time.perf_counter() - started)
            counts[0 if ok else 1] += 1

    cpu0, own0, t0 = cpu_seconds(pid), cpu_seconds(os.getpid()), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    own = cpu_seconds(os.getpid()) - own0
    return Phase(name, counts[0], counts[1], elapsed, cpu, own, latencies)


async def memory_per_agent(url: str, pid: int, tokens: list[str]) -> tuple[int, int]:
    """(RSS before, RSS with every agent's coordinate socket open and one node sent)."""
    from tests.controlplane.conftest import node

    before = rss_bytes(pid)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            for token in tokens:
                ws = await session.ws_connect(
                    f"{url}{ME}/coordinate", headers={"Coder-Session-Token": token}
                )
                await ws.send_bytes(json.dumps(node()).encode())
                sockets.append(ws)
            # One round trip after the last node, so the server has read them all.
            async with session.get(f"{url}/healthz") as response:
                await response.read()
            after = rss_bytes(pid)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return before, after


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="wsagent-bench-") as tmp:
        data_dir = Path(tmp)
        _, tokens = await prepare(data_dir, args.agents)
        proc, url = await start_server(data_dir)
        try:
            agent = {"Coder-Session-Token": tokens[0]}
            stats = {
                "conns_by_proto": {"ssh": 1},
                "num_comms": 1,
                "rx_bytes": 1200,
                "rx_packets": 3,
                "tx_bytes": 3400,
                "tx_packets": 4,
            }
            phases = [
                ("GET /healthz (baseline)", "GET", "/healthz", {}, None),
                ("GET /me/metadata", "GET", f"{ME}/metadata", agent, None),
                ("POST /me/report-stats", "POST", f"{ME}/report-stats", agent, stats),
                (
                    "POST report-stats (idle)",
                    "POST",
                    f"{ME}/report-stats",
                    agent,
                    {**stats, "rx_bytes": 0, "tx_bytes": 0},
                ),
            ]
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            rounds: dict[str, list[Phase]] = {name: [] for name, *_ in phases}
            async with aiohttp.ClientSession(connector=connector) as session:
                # Interleaved rounds (A B C D A B C D ...): on a shared machine a burst of
                # someone else's work then hits every endpoint alike, not one of them.
                for _ in range(args.rounds):
                    for name, method, path, headers, body in phases:
                        rounds[name].append(
                            await run_phase(
                                name,
                                session,
                                proc.pid,
                                method,
                                f"{url}{path}",
                                headers,
                                body,
                                args.seconds,
                                args.concurrency,
                                args.max_requests,
                            )
                        )
            results = [median_phase(r) for r in rounds.values()]
            before, after = await memory_per_agent(url, proc.pid, tokens)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    print(
        f"control plane load: {os.cpu_count()} cores, concurrency {args.concurrency}, "
        f"median of {args.rounds} interleaved rounds of {args.seconds:g} s, "
        f"Python {sys.version.split()[0]}"
    )
    for phase in results:
        print("  " + phase.row())
    base = results[0].rps
    for phase in results[1:]:
        print(f"  {phase.name:<24} = {100 * phase.rps / base:.0f} % of the /healthz rate")
    delta = after - before
    print(
        f"  server RSS: {before / MIB:.1f} MiB idle (baseline), {after / MIB:.1f} MiB with "
        f"{args.agents} agents connected -> {delta / args.agents / 1024:.1f} KiB per agent"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and endpoint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--max-requests", type=int, default=200_000)
    asyncio.run(main(parser.parse_args()))
