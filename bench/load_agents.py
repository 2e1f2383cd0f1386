"""Many agents against one control plane: a protocol-level load generator.

    .venv/bin/python bench/load_agents.py [--steps 250,500,1000,2000] [--step-seconds 20]
                                          [--stats-interval 10] [--health-interval 30]
                                          [--metadata-keys 2] [--metadata-interval 10]

Each simulated agent does what the daemon does on the wire (docs/protocol.md, "Wire notes"), without
running anything: token auth, ``GET /me/metadata``, ``POST /me/startup``,
``POST /me/report-lifecycle`` (starting, ready), then it holds ``/me/coordinate`` open with
one agent node, posts ``/me/report-stats`` (non-zero traffic) every ``--stats-interval``
and flips its app's health every ``--health-interval`` on average, and posts each of its
``--metadata-keys`` agent metadata keys every ``--metadata-interval`` (Coder's scale test:
2 keys every 10 s). Every agent has its own workspace with one app carrying a health check
URL. The server's metadata counters (posts, store transactions, rows) are scraped from its
metrics endpoint after each step: the transactions stay at one per second however many
agents post (the writes are coalesced per tick).

The server is a real ``wsagent server`` process (SQLite in a temp dir) on loopback; this
process is the generator: one aiohttp session, one connection pool. The fleet ramps up in
steps, new agents starting at ``--spawn-rate`` per second. After each ramp the step is
measured for ``--step-seconds``: latency per endpoint (the start-up endpoints' figures come
from that step's ramp), the server's RSS and CPU (``/proc/<pid>/{status,stat}``, all
threads) and errors; then every agent's status is read through the API
(``GET /api/v2/workspaceagents/{id}``), which must say ``connected`` and ``ready``.
The whole run is bounded by ``--max-seconds`` and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from controlplane_load import cpu_seconds, rss_bytes, start_server  # noqa: E402

from controlplane.collector import THRESHOLDS  # noqa: E402

ME = "/api/v2/workspaceagents/me"
MIB = 1 << 20
TOKEN_HEADER = "Coder-Session-Token"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass
class SimAgent:
    id: str
    token: str


@dataclass
class Step:
    agents: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Those of the requests that ended inside the measured window: the steady state, with
    # every agent of the step connected and none starting.
    window_latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: int = 0  # every successful request of the step, ramp included
    window_seconds: float = 0.0
    window_requests: int = 0  # those of the measured window
    server_cpu: float = 0.0  # CPU seconds the server used over the window
    client_cpu: float = 0.0
    rss: int = 0
    connected: int = -1  # -1: not read back yet
    ready: int = -1
    listen_overflows: int = 0  # machine-wide, over the window and the check
    metadata_posts: float = 0.0  # server counters over the window
    metadata_writes: float = 0.0
    metadata_rows: float = 0.0
    db_cpu: float = 0.0  # PostgreSQL's processes (same machine), when it is the store

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def all_latencies(self) -> list[float]:
        return [v for lat in self.latencies.values() for v in lat]


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


class Load:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url = url
        self.args = args
        self.stop = asyncio.Event()
        self.step = Step(0)
        self.error_samples: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.running = 0  # agents past start-up, socket open
        self.measuring = False  # inside a step's measured window
        self.baseline_rss = 0
        self.metrics_url = ""
        # One pool; websockets hold their connection for good, so no per-host cap.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=REQUEST_TIMEOUT,
        )

    def error(self, endpoint: str, message: str) -> None:
        self.step.errors[endpoint] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{endpoint}: {message}")

    async def call(
        self, endpoint: str, method: str, path: str, token: str, body: Any = None
    ) -> Any:
        """One request, timed; returns the decoded body or None on any failure."""
        headers = {TOKEN_HEADER: token}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        step = self.step
        started = time.perf_counter()
        try:
            async with self.session.request(
                method, self.url + path, data=data, headers=headers
            ) as response:
                raw = await response.read()
                if response.status >= 300:
                    self.error(endpoint, f"HTTP {response.status} {raw[:200]!r}")
                    return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error(endpoint, repr(exc))
            return None
        elapsed = time.perf_counter() - started
        step.latencies[endpoint].append(elapsed)
        if self.measuring:
            step.window_latencies.append(elapsed)
        step.requests += 1
        return json.loads(raw) if raw else {}

    async def agent(self, sim: SimAgent) -> None:
        from agent.sdk.tailnet import Node

        meta = await self.call("GET metadata", "GET", f"{ME}/metadata", sim.token)
        if meta is None:
            return
        apps = [a["id"] for a in meta.get("apps", []) if a.get("healthcheck", {}).get("url")]
        startup = {"version": "v0.1.0", "expanded_directory": "/home/coder"}
        await self.call("POST startup", "POST", f"{ME}/startup", sim.token, startup)
        for state in ("starting", "ready"):
            body = {"state": state}
            await self.call(
                "POST report-lifecycle", "POST", f"{ME}/report-lifecycle", sim.token, body
            )
        started = time.perf_counter()
        step = self.step
        try:
            ws = await self.session.ws_connect(
                f"{self.url}{ME}/coordinate", headers={TOKEN_HEADER: sim.token}, autoping=True
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error("WS coordinate", repr(exc))
            return
        step.latencies["WS coordinate"].append(time.perf_counter() - started)
        self.running += 1
        try:
            await ws.send_bytes(json.dumps(Node.new_agent_node(999).to_json()).encode())
            reader = asyncio.create_task(self.read_socket(ws))
            try:
                await self.report_loop(sim, apps)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        finally:
            self.running -= 1
            await ws.close()

    async def read_socket(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # Reading answers the server's pings; a close before the end is an error.
        async for _ in ws:
            pass
        if not self.stop.is_set():
            self.error("WS coordinate", f"closed by the server: {ws.close_code}")

    async def report_loop(self, sim: SimAgent, apps: list[str]) -> None:
        args = self.args
        rng = random.Random(sim.id)
        stats_at = time.monotonic() + rng.uniform(0, args.stats_interval)
        health_at = time.monotonic() + rng.uniform(0, 2 * args.health_interval)
        meta_at = time.monotonic() + rng.uniform(0, args.metadata_interval)
        if not args.metadata_keys:
            meta_at = float("inf")
        healthy = False
        while not self.stop.is_set():
            now = time.monotonic()
            wake = min(stats_at, health_at, meta_at)
            if wake > now:
                try:
                    await asyncio.wait_for(self.stop.wait(), wake - now)
                    return
                except TimeoutError:
                    pass
            now = time.monotonic()
            if now >= stats_at:
                stats_at += args.stats_interval
                stats = {
                    "conns_by_proto": {"ssh": 1},
                    "num_comms": 1,
                    "rx_packets": rng.randint(1, 50),
                    "rx_bytes": rng.randint(100, 50_000),
                    "tx_packets": rng.randint(1, 50),
                    "tx_bytes": rng.randint(100, 50_000),
                }
                await self.call("POST report-stats", "POST", f"{ME}/report-stats", sim.token, stats)
            if now >= meta_at:
                meta_at += args.metadata_interval
                for k in range(args.metadata_keys):
                    body = {
                        "collected_at": "2023-05-01T12:00:00Z",
                        "age": 0,
                        "value": f"{rng.random():.3f}",
                        "error": "",
                    }
                    await self.call("POST metadata", "POST", f"{ME}/metadata/k{k}", sim.token, body)
            if now >= health_at and apps:
                health_at += rng.uniform(0, 2 * args.health_interval)
                healthy = not healthy
                body = {"Healths": {apps[0]: "healthy" if healthy else "unhealthy"}}
                await self.call("POST app-health", "POST", f"{ME}/app-health", sim.token, body)

    async def metadata_counters(self) -> tuple[float, float, float]:
        """(posts, transactions, rows) of agent metadata, from the server's metrics."""
        if not self.metrics_url:
            return (0.0, 0.0, 0.0)
        try:
            async with self.session.get(self.metrics_url) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return (0.0, 0.0, 0.0)
        values = dict.fromkeys(("posts", "writes", "rows_written"), 0.0)
        for line in text.splitlines():
            for name in values:
                if line.startswith(f"wsagent_server_metadata_{name}_total "):
                    values[name] = float(line.split()[1])
        return values["posts"], values["writes"], values["rows_written"]

    async def verify(self, user_token: str, agents: list[SimAgent]) -> tuple[int, int]:
        """(connected, ready) as the API reports them, read for every agent."""
        counts = [0, 0]
        limit = asyncio.Semaphore(16)

        async def one(sim: SimAgent) -> None:
            try:
                async with (
                    limit,
                    self.session.get(
                        f"{self.url}/api/v2/workspaceagents/{sim.id}",
                        headers={TOKEN_HEADER: user_token},
                    ) as response,
                ):
                    body = await response.json()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.error("verify", repr(exc))
                return
            counts[0] += body.get("status") == "connected"
            counts[1] += body.get("lifecycle_state") == "ready"

        await asyncio.gather(*(one(a) for a in agents))
        return counts[0], counts[1]

    async def run(
        self,
        user_token: str,
        agents: list[SimAgent],
        pids: list[int],
        db_pids: Callable[[], list[int]] = list,
    ) -> list[Step]:
        args = self.args
        steps: list[Step] = []
        started = 0
        for target in args.steps:
            self.step = step = Step(target)
            steps.append(step)
            # Ramp: start the new agents at --spawn-rate per second.
            t0 = time.monotonic()
            for i in range(started, target):
                due = t0 + (i - started) / args.spawn_rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                self.tasks.append(asyncio.create_task(self.agent(agents[i])))
            started = target
            deadline = time.monotonic() + 60
            while self.running < target and time.monotonic() < deadline:
                if step.error_count:
                    break
                await asyncio.sleep(0.1)
            # Measure the steady state.
            cpu0, own0, rss0 = total_cpu(pids), cpu_seconds(os.getpid()), time.perf_counter()
            db0 = total_cpu(db_pids())
            requests0, overflows0 = step.requests, listen_overflows()
            meta0 = await self.metadata_counters()
            self.measuring = True
            await asyncio.sleep(args.step_seconds)
            self.measuring = False
            meta1 = await self.metadata_counters()
            step.metadata_posts, step.metadata_writes, step.metadata_rows = (
                b - a for a, b in zip(meta0, meta1, strict=True)
            )
            step.window_seconds = time.perf_counter() - rss0
            step.server_cpu = total_cpu(pids) - cpu0
            step.db_cpu = total_cpu(db_pids()) - db0
            step.client_cpu = cpu_seconds(os.getpid()) - own0
            step.window_requests = step.requests - requests0
            step.rss = sum(rss_bytes(pid) for pid in pids)
            # Printed before the read-back: on a loaded machine that can outlast --max-seconds.
            print_step(step, self.baseline_rss)
            step.connected, step.ready = await self.verify(user_token, agents[:target])
            step.listen_overflows = listen_overflows() - overflows0
            print(
                f"  read back: connected {step.connected}/{step.agents},"
                f" ready {step.ready}/{step.agents}, listen overflows {step.listen_overflows}",
                flush=True,
            )
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()
        return steps


def step_row(step: Step) -> str:
    lat = step.all_latencies()
    steady = step.window_latencies
    cpu = 100 * step.server_cpu / max(step.window_seconds, 1e-9)
    per_request = 1e6 * step.server_cpu / max(1, step.window_requests)
    return (
        f"{step.agents:>6} agents: p50 {pct(lat, 0.5):6.2f} ms  p95 {pct(lat, 0.95):7.2f} ms"
        f"  p99 {pct(lat, 0.99):7.2f} ms (window only: p50 {pct(steady, 0.5):.2f}"
        f" p95 {pct(steady, 0.95):.2f} p99 {pct(steady, 0.99):.2f} ms)"
        f"  RSS {step.rss / MIB:6.1f} MiB"
        f"  server CPU {cpu:3.0f} % ({per_request:.0f} us/request)"
        + (
            f"  db CPU {100 * step.db_cpu / max(step.window_seconds, 1e-9):3.0f} %"
            if step.db_cpu
            else ""
        )
        + f"  client CPU {100 * step.client_cpu / max(step.window_seconds, 1e-9):3.0f} %"
        f"  errors {step.error_count}"
        + (
            f"  connected {step.connected}/{step.agents}  ready {step.ready}/{step.agents}"
            if step.connected >= 0
            else ""
        )
        + f"  metadata {step.metadata_posts / max(step.window_seconds, 1e-9):.0f} posts/s"
        f" -> {step.metadata_writes / max(step.window_seconds, 1e-9):.1f} writes/s"
        f" ({step.metadata_rows:.0f} rows)"
    )


def total_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:  # a backend that exited meanwhile
            pass
    return total


def listen_overflows() -> int:
    """SYNs dropped because an accept queue was full (all of the machine's sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


def print_step(step: Step, baseline_rss: int) -> None:
    rate = step.window_requests / max(step.window_seconds, 1e-9)
    per_agent = (step.rss - baseline_rss) / step.agents / 1024
    print(
        f"\n{step.agents} agents: {rate:.0f} req/s in the window, memory per agent"
        f" {per_agent:.1f} KiB"
    )
    print(f"  {'endpoint':<22} {'count':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} errors")
    for name in sorted(set(step.latencies) | set(step.errors)):
        lat = step.latencies.get(name, [])
        print(
            f"  {name:<22} {len(lat):>6} {pct(lat, 0.5):8.2f} {pct(lat, 0.95):8.2f}"
            f" {pct(lat, 0.99):8.2f} {step.errors.get(name, 0)}"
        )
    print(step_row(step), flush=True)


def report(steps: list[Step], baseline_rss: int, args: argparse.Namespace) -> None:
    print(
        f"\nload: {args.store}, {args.replicas} replica(s), {os.cpu_count()} cores,"
        f" stats every {args.stats_interval:g} s, health flip every"
        f" ~{args.health_interval:g} s, window {args.step_seconds:g} s per step,"
        f" Python {sys.version.split()[0]}; server RSS with no agent {baseline_rss / MIB:.1f} MiB"
    )
    for step in steps:
        print(step_row(step))
    ok = [s.agents for s in steps if pct(s.all_latencies(), 0.95) < 200 and not s.error_count]
    print(f"largest N with p95 < 200 ms and no errors: {max(ok) if ok else 'none'}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def prepare(
    data_dir: Path, count: int, metadata_keys: int = 2, database_url: str = ""
) -> tuple[str, list[SimAgent]]:
    """A user, and one workspace per agent with one health-checked app."""
    from controlplane.admin import agent_spec, create_user, create_workspace
    from controlplane.store.open import open_store

    store = await open_store(data_dir, database_url, jobs=False)
    try:
        _, user_token = await create_user(store, "load")
        spec = agent_spec(
            {
                "name": "main",
                "apps": [{"slug": "web", "healthcheck": {"url": "http://localhost:1/"}}],
                "metadata": [
                    {"key": f"k{k}", "script": "true", "interval": 10} for k in range(metadata_keys)
                ],
            }
        )
        agents = []
        for i in range(count):
            _, created = await create_workspace(store, "load", f"ws{i}", [spec])
            agents.append(SimAgent(created[0].record.id, created[0].token))
    finally:
        await store.close()
    return user_token, agents


async def run_load(args: argparse.Namespace) -> tuple[list[Step], int, list[str]]:
    """Run the ramp; returns the steps, the server's idle RSS and sample error messages."""
    # Both sides hold one socket per agent (the server inherits this limit), plus the pool.
    raise_nofile(2 * max(args.steps) + 1024)
    if args.store == "sqlite" and args.replicas > 1:
        raise SystemExit("--replicas needs --store postgres")
    with tempfile.TemporaryDirectory(prefix="wsagent-load-") as tmp:
        data_dir = Path(tmp)
        metrics_port = free_port()  # no fixed port: runs may overlap on a shared machine
        flags = ["--heartbeat-interval", f"{args.heartbeat_interval:g}s"]
        if args.store == "postgres":
            from fleet import start_fleet, start_pg

            pg = await start_pg()
            try:
                user_token, agents = await prepare(
                    data_dir, max(args.steps), args.metadata_keys, pg.url()
                )
                fleet = await start_fleet(
                    pg, data_dir, args.replicas, *flags, first_metrics=metrics_port
                )
            except BaseException:
                await asyncio.to_thread(pg.destroy)
                raise
            url, pids, db_pids, stop = fleet.url, fleet.pids, fleet.db_pids, fleet.stop
        else:
            user_token, agents = await prepare(data_dir, max(args.steps), args.metadata_keys)
            proc, url = await start_server(
                data_dir, "normal", *flags, f"--metrics-address=127.0.0.1:{metrics_port}"
            )
            pids, db_pids = [proc.pid], list
            if args.pin and len(os.sched_getaffinity(0)) >= 2:
                # A core each: the generator's CPU no longer competes with the server's.
                server_core, own_core = sorted(os.sched_getaffinity(0))[:2]
                for tid in os.listdir(f"/proc/{proc.pid}/task"):  # every thread of it
                    os.sched_setaffinity(int(tid), {server_core})
                os.sched_setaffinity(0, {own_core})

            async def stop() -> None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

        try:
            baseline_rss = sum(rss_bytes(pid) for pid in pids)
            load = Load(url, args)
            load.baseline_rss = baseline_rss
            load.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            async with asyncio.timeout(args.max_seconds):
                steps = await load.run(user_token, agents, pids, db_pids)
        finally:
            await stop()
    return steps, baseline_rss, load.error_samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=lambda s: [int(x) for x in s.split(",")], default=[250, 500, 1000, 2000]
    )
    parser.add_argument("--step-seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--stats-interval", type=float, default=10.0)
    parser.add_argument("--health-interval", type=float, default=30.0, help="mean, per agent")
    parser.add_argument("--spawn-rate", type=float, default=100.0, help="new agents per second")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=3.0, help="the server's (its default)"
    )
    parser.add_argument("--metadata-keys", type=int, default=2, help="per agent (Coder: 2)")
    parser.add_argument("--metadata-interval", type=float, default=10.0, help="seconds")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard bound on the run")
    parser.add_argument(
        "--store", choices=("sqlite", "postgres"), default="sqlite", help="the server's store"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="servers on one PostgreSQL, behind HAProxy if > 1"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="SQLite: the server on one core, this generator on another (a quiet machine)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    # This process holds every simulated agent, as the server does: with CPython's default
    # collector thresholds its own collection pauses (up to 0.7 s at 5,000 agents) would be
    # counted as the server's latency. It takes the server's thresholds.
    gc.set_threshold(*THRESHOLDS)
    arguments = parse_args()
    result, idle_rss, samples = asyncio.run(run_load(arguments))
    report(result, idle_rss, arguments)
    for sample in samples:
        print("error:", sample)
