"""Agent footprint: idle RSS, exec-to-first-request time, idle CPU — each beside a bare
``python -c pass`` measured in the same run.

    .venv/bin/python bench/agent_footprint.py [--idle-seconds 60] [--runs 7]
        [--tree OLD_CHECKOUT --tree . [--rounds 2]]

* Start-up: a raw TCP listener on loopback timestamps the moment the agent's first HTTP
  request has fully arrived; the clock starts just before the exec. Median of ``--runs``.
  Also the CPU time the agent had used by then (steadier than wall time on a shared
  machine). Baselines: wall and CPU time of ``python -c pass`` from exec to exit, and a
  script that only imports asyncio and httpx and sends one request (the floor under any
  agent built on them).
* ``--tree``: measure the agent of another checkout (its code is the one imported); given
  several times, the runs alternate between them, for before/after figures.
* Idle RSS: the agent connected to the real control plane (in this process, SQLite in a
  temp dir), coordinate socket open, then left alone; VmRSS from /proc at the end of the
  idle window. Baseline: VmRSS of a bare interpreter (``-c`` printing /proc/self/status).
* Idle CPU: CPU time of the agent process, all threads (``/proc/<pid>/task/*/sched``)
  over ``--idle-seconds``, as a percentage of one core. Baseline: the total CPU time that
  ``python -c pass`` needs to start and exit.

Targets: RSS <= 40 MiB, first request <= 300 ms, idle CPU < 0.2 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIB = 1 << 20
TARGET_RSS_MIB = 40.0
TARGET_FIRST_REQUEST_MS = 300.0
TARGET_IDLE_CPU_PCT = 0.2


def agent_env(url: str, token: str, log_dir: Path, tree: Path | None = None) -> dict[str, str]:
    """The agent's environment; with ``tree``, that checkout's code is the one imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
    env.update(CODER_AGENT_URL=url, CODER_AGENT_TOKEN=token, CODER_AGENT_LOG_DIR=str(log_dir))
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def baseline_python() -> tuple[float, float, float]:
    """(wall seconds, RSS MiB, CPU seconds) of a bare ``python -c pass``.

    The RSS comes from the same interpreter printing its own VmRSS instead of doing
    nothing: a child's peak RSS (``ru_maxrss``, VmHWM) starts from its parent's at fork
    and survives exec, so it would report this benchmark's own size.
    """
    started = time.monotonic()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ)
    _, _, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    status = subprocess.run(
        [sys.executable, "-c", "print(open('/proc/self/status').read())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return wall, rss / 1024, usage.ru_utime + usage.ru_stime


# What any asyncio program pays to send one request with httpx: the floor under the agent's
# start-up (verify=False: no CA bundle, as the agent does for an http:// URL).
LIBRARY_FLOOR = """
import asyncio, sys
import httpx
async def main():
    async with httpx.AsyncClient(verify=False) as client:
        await client.get(sys.argv[1])
asyncio.run(main())
"""


async def first_request(log_dir: Path, tree: Path | None) -> tuple[float, float]:
    """Exec the agent of ``tree`` (None: the library floor) against a raw listener;
    (seconds until its first request arrived, CPU seconds it had used by then)."""
    arrived: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
    pids: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if not arrived.done():
                arrived.set_result((time.monotonic(), cpu_ns(pids[0]) / 1e9))
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = agent_env(url, str(uuid.uuid4()), log_dir, tree)
    argv = ["-c", LIBRARY_FLOOR, url] if tree is None else ["-m", "wsagent", "agent"]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        env=env,
        cwd=tree,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    pids.append(proc.pid)
    try:
        async with asyncio.timeout(30):
            at, cpu = await arrived
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await proc.wait()
        server.close()
        await server.wait_closed()
    return at - started, cpu


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def private_mib(pid: int) -> float:
    """Pages only this process maps (USS): what it adds beside the processes it shares
    code with. RSS counts the interpreter's and libraries' shared pages in each of them."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


def cpu_ns(pid: int) -> int:
    """CPU time of the whole process (all threads), in ns.

    ``/proc/<pid>/task/*/sched`` (``se.sum_exec_runtime``, ms with ns digits) is precise;
    without it (no CONFIG_SCHED_DEBUG) fall back to utime + stime from ``/proc/<pid>/stat``,
    which counts whole clock ticks (10 ms).
    """
    total, found = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "sched").read_text()
        except OSError:
            continue  # a thread that just ended, or no sched file at all
        for line in text.splitlines():
            if line.startswith("se.sum_exec_runtime"):
                total += int(float(line.split(":")[1]) * 1_000_000)
                found = True
    if found:
        return total
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1_000_000_000 // CLOCK_TICKS


@contextlib.asynccontextmanager
async def control_plane(work: Path) -> AsyncIterator[tuple[str, Callable[[], Awaitable[str]]]]:
    """The real control plane on loopback; yields its URL and a new-agent-token factory."""
    import logging

    import structlog

    from controlplane.admin import agent_spec, create_user, create_workspace
    from controlplane.config import ServerConfig
    from controlplane.server import start_server

    # The server's own info lines would interleave with the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    config = ServerConfig(data_dir=work / "server", host="127.0.0.1", port=0)
    server = await start_server(config)
    await create_user(server.store, "bench", "bench@example.com")
    count = 0

    async def new_agent() -> str:
        nonlocal count
        count += 1
        _, created = await create_workspace(
            server.store, "bench", f"ws{count}", [agent_spec({"name": "main"})]
        )
        return created[0].token

    try:
        yield server.url, new_agent
    finally:
        await server.stop()


async def start_connected(
    url: str, token: str, log_dir: Path, tree: Path, prefix: tuple[str, ...] = ()
) -> tuple[asyncio.subprocess.Process, asyncio.Task[bytes]]:
    """Start the agent of ``tree`` and return once it logged ``agent.connected``."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "wsagent",
        "agent",
        env=agent_env(url, token, log_dir, tree),
        cwd=tree,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        async for line in proc.stdout:
            if b'"agent.connected"' in line:
                break
    drain = asyncio.create_task(proc.stdout.read())  # keep the pipe from filling
    return proc, drain


async def idle_footprint(
    url: str, token: str, work: Path, idle_seconds: float, tree: Path
) -> tuple[float, float, float]:
    """(RSS MiB after the idle window, CPU % of one core during it, CPU seconds used) of a
    connected agent."""
    proc, drain = await start_connected(url, token, work / "agent-logs", tree)
    try:
        # Let start-up work (first stats post, lazy imports) finish before measuring.
        await asyncio.sleep(2.0)
        cpu_before, t_before = cpu_ns(proc.pid), time.monotonic()
        await asyncio.sleep(idle_seconds)
        cpu_after, t_after = cpu_ns(proc.pid), time.monotonic()
        rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        await proc.wait()
        drain.cancel()
    used = (cpu_after - cpu_before) / 1e9
    return rss, used / (t_after - t_before) * 100, used


def children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def pid1_footprint(
    url: str, token: str, work: Path, tree: Path
) -> tuple[float, float, float, float] | None:
    """(reaper RSS, reaper USS, agent RSS, agent USS) in MiB when the agent is PID 1 of a
    new PID namespace, or None where that cannot be set up (needs root and util-linux
    ``unshare``)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    prefix = ("unshare", "--pid", "--fork", "--mount-proc")
    proc, drain = await start_connected(url, token, work / "pid1-logs", tree, prefix)
    [init] = children_of(proc.pid)
    try:
        await asyncio.sleep(2.0)
        [agent] = children_of(init)
        return rss_mib(init), private_mib(init), rss_mib(agent), private_mib(agent)
    finally:
        os.kill(init, signal.SIGTERM)  # PID 1 forwards it to the agent, then exits
        async with asyncio.timeout(10):
            await proc.wait()
        drain.cancel()


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--tree",
        type=Path,
        action="append",
        help="a checkout of this repository whose agent to measure (repeat to compare "
        "before/after: runs alternate between them); default: this one",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="idle and PID 1 measurements per tree"
    )
    args = parser.parse_args()
    trees: list[Path] = [t.resolve() for t in args.tree or [REPO]]

    # An installed agent has its bytecode compiled at install time (pip compiles wheels);
    # this tree may not (PYTHONDONTWRITEBYTECODE=1 in a developer's shell makes every start
    # compile each changed module again: 54 modules, 60-120 ms here). Compile it as an
    # install would, so the figure is an installed agent's start-up.
    for tree in trees:
        for package in ("agent", "wscommon", "wsagent"):
            compileall.compile_dir(tree / package, quiet=1)

    with tempfile.TemporaryDirectory(prefix="wsagent-bench-") as tmp:
        work = Path(tmp)
        baselines = []
        floors: list[tuple[float, float]] = []
        firsts: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
        for i in range(args.runs):  # interleaved, so a load change hits every column
            baselines.append(baseline_python())
            floors.append(await first_request(work / f"floor{i}", None))
            for tree in trees:
                firsts[tree].append(await first_request(work / f"logs{i}", tree))
        base_wall = statistics.median(b[0] for b in baselines)
        base_rss = statistics.median(b[1] for b in baselines)
        base_cpu = statistics.median(b[2] for b in baselines)
        idle: dict[Path, list[tuple[float, float, float]]] = {tree: [] for tree in trees}
        pid1: dict[Path, list[tuple[float, float, float, float]]] = {tree: [] for tree in trees}
        async with control_plane(work) as (url, new_agent):
            for _ in range(args.rounds):
                for tree in trees:
                    idle[tree].append(
                        await idle_footprint(url, await new_agent(), work, args.idle_seconds, tree)
                    )
                    as_init = await pid1_footprint(url, await new_agent(), work, tree)
                    if as_init is not None:
                        pid1[tree].append(as_init)

    print(f"agent footprint ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    base_ms = base_wall * 1000
    floor_ms = statistics.median(f[0] for f in floors) * 1000
    floor_cpu = statistics.median(f[1] for f in floors) * 1000
    print(
        f"  python -c pass: {base_ms:.0f} ms, {base_cpu * 1000:.0f} ms CPU, RSS"
        f" {base_rss:.1f} MiB; asyncio + httpx sending one request (no agent code):"
        f" {floor_ms:.0f} ms ({floor_ms / base_ms:.1f}x), {floor_cpu:.0f} ms CPU"
        f" ({floor_cpu / (base_cpu * 1000):.1f}x)"
    )
    for tree in trees:
        if len(trees) > 1:
            print(f"{tree}:")
        print(f"  {'measure':<34} {'agent':>12} {'python -c pass':>16} {'target':>10}")
        first_ms = statistics.median(f[0] for f in firsts[tree]) * 1000
        first_cpu = statistics.median(f[1] for f in firsts[tree]) * 1000
        print(
            f"  {'exec -> first request (median)':<34} {first_ms:>9.0f} ms {base_ms:>13.0f} ms"
            f" {'<= 300 ms':>10}  {verdict(first_ms <= TARGET_FIRST_REQUEST_MS)}"
        )
        print(
            f"  {'  x python -c pass; CPU used':<34} {first_ms / base_ms:>10.1f} x"
            f" {first_cpu:>8.0f} ms CPU ({first_cpu / (base_cpu * 1000):.1f}x)"
        )
        for rss, cpu_pct, cpu_used in idle[tree]:
            print(
                f"  {'RSS, connected and idle':<34} {rss:>8.1f} MiB {base_rss:>12.1f} MiB"
                f" {'<= 40 MiB':>10}  {verdict(rss <= TARGET_RSS_MIB)}"
            )
            idle_label = f"CPU over {args.idle_seconds:.0f} s idle"
            print(
                f"  {idle_label:<34} {cpu_pct:>10.4f} % {base_cpu * 1000:>10.0f} ms CPU"
                f" {'< 0.2 %':>10}  {verdict(cpu_pct < TARGET_IDLE_CPU_PCT)}"
            )
            print(f"  agent CPU used while idle: {cpu_used * 1000:.2f} ms")
        for reaper_rss, reaper_uss, agent_rss, agent_uss in pid1[tree]:
            print(
                f"  as PID 1 of a new PID namespace: reaper RSS {reaper_rss:.1f} MiB, private"
                f" {reaper_uss:.1f} MiB; agent RSS {agent_rss:.1f} MiB, private"
                f" {agent_uss:.1f} MiB"
            )
        runs = ", ".join(f"{f[0] * 1000:.0f}" for f in firsts[tree])
        print(f"  first-request runs (ms): {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
