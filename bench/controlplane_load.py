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
  connected agent. Baseline: the server's RSS with no agent connected. Then the server's
  CPU time over ``--idle-seconds`` with all of them connected and idle (their
  ``last_connected_at`` refreshes, every 3 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
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


async def start_server(
    data_dir: Path, durability: str = "normal", *extra: str
) -> tuple[asyncio.subprocess.Process, str]:
    """A ``wsagent server`` process on a free loopback port; ``extra``: more flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "WSAGENT_"))}
    if "WSAGENT_EVENT_LOOP" in os.environ:  # compare uvloop and asyncio's loop
        env["WSAGENT_EVENT_LOOP"] = os.environ["WSAGENT_EVENT_LOOP"]
    env["PYTHONUNBUFFERED"] = "1"
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
        "--durability",
        durability,
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=str(REPO),
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError("server exited before listening")
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "server.listening":
                url = str(event["url"])
                break
    # Successful requests are not logged; keep reading the rest so the pipe never fills.
    _DRAIN.append(asyncio.create_task(drain(proc.stdout)))
    return proc, url


_DRAIN: list[asyncio.Task[None]] = []


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


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


def agent_node() -> dict[str, Any]:
    """A tailnet node as an agent sends it (random keys: nothing dials it)."""
    address = "fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4/128"
    return {
        "id": secrets.randbits(62),
        "as_of": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key": f"nodekey:{secrets.token_hex(32)}",
        "disco": f"discokey:{secrets.token_hex(32)}",
        "preferred_derp": 999,
        "derp_latency": {"999-v4": 0.01},
        "addresses": [address],
        "allowed_ips": [address],
        "endpoints": [],
    }


@dataclass
class Fleet:
    rss_before: int
    rss_after: int
    idle_seconds: float
    idle_cpu: float  # server CPU seconds over the idle window, every agent connected


async def connected_fleet(url: str, pid: int, tokens: list[str], idle_seconds: float) -> Fleet:
    """Open every agent's coordinate socket (one node each), then leave them idle."""
    before = rss_bytes(pid)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            for token in tokens:
                ws = await session.ws_connect(
                    f"{url}{ME}/coordinate", headers={"Coder-Session-Token": token}
                )
                await ws.send_bytes(json.dumps(agent_node()).encode())
                sockets.append(ws)
            # One round trip after the last node, so the server has read them all.
            async with session.get(f"{url}/healthz") as response:
                await response.read()
            after = rss_bytes(pid)
            # Idle: what the connected agents cost with no traffic (connection refreshes,
            # WebSocket pings).
            cpu0 = cpu_seconds(pid)
            await asyncio.sleep(idle_seconds)
            idle_cpu = cpu_seconds(pid) - cpu0
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return Fleet(before, after, idle_seconds, idle_cpu)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="wsagent-bench-") as tmp:
        data_dir = Path(tmp)
        _, tokens = await prepare(data_dir, args.agents)
        proc, url = await start_server(data_dir, args.durability)
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
            fleet = await connected_fleet(url, proc.pid, tokens, args.idle_seconds)
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
        f"durability {args.durability}, "
        f"Python {sys.version.split()[0]}"
    )
    for phase in results:
        print("  " + phase.row())
    base = results[0].rps
    for phase in results[1:]:
        print(f"  {phase.name:<24} = {100 * phase.rps / base:.0f} % of the /healthz rate")
    delta = fleet.rss_after - fleet.rss_before
    print(
        f"  server RSS: {fleet.rss_before / MIB:.1f} MiB idle (baseline), "
        f"{fleet.rss_after / MIB:.1f} MiB with {args.agents} agents connected -> "
        f"{delta / args.agents / 1024:.1f} KiB per agent"
    )
    idle = 100 * fleet.idle_cpu / fleet.idle_seconds
    print(
        f"  server CPU with {args.agents} idle agents connected: {idle:.2f} % of a core "
        f"over {fleet.idle_seconds:g} s -> "
        f"{1e6 * fleet.idle_cpu / fleet.idle_seconds / args.agents:.1f} us of CPU per agent per s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and endpoint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--durability", choices=("normal", "full"), default="normal")
    parser.add_argument("--idle-seconds", type=float, default=9.0, help="3 connection refreshes")
    asyncio.run(main(parser.parse_args()))
