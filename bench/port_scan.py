"""Listening-port scan cost, beside psutil and the bare read of /proc/net/tcp{,6}.

    .venv/bin/python bench/port_scan.py [--listeners 10000] [--established 5000] [--runs 20]

A child process opens the sockets on 127.0.0.1 (raising RLIMIT_NOFILE) and holds them
while this process measures, in the same run and on the same sockets:

* ``read``      the bare read of /proc/net/tcp and /proc/net/tcp6 (the kernel's share);
* ``parse``     read + ``parse_proc_net_tcp`` (LISTEN rows only);
* ``netlink``   ``netlink_listeners()``: sock_diag with a LISTEN state filter;
* ``scan``      ``PortScanner.scan()`` as the agent runs it, cache off, names warm
                (the inode->name map is kept between scans);
* ``scan-new``  the first scan after a new listener appeared (the child opens one before
                each run): the scanner remembers each process's sockets, so it reads
                the fds of the changed process only;
* ``scan-cold`` the same with a new scanner each time (walks /proc/<pid>/fd of every
                process until every listener is found);
* ``psutil``    ``psutil.net_connections("tcp")`` filtered to LISTEN (psutil is a dev
                dependency only).

Two cases (docs/design.md, "Listening ports on demand"): N listeners, and 50 listeners among
M established connections (each connection is two ESTABLISHED rows, both ends being local).
Figures are the median and the best of ``--runs`` runs, in milliseconds.

``--endpoint`` adds the server's answer time on loopback: ``GET /listening-ports`` through
a real ``wsagent server`` and ``wsagent agent`` (bench/pty_stack.py), back to back (the
agent's 1 s cache mostly answers) and spaced 1.1 s apart (every request scans).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from agent.ports import PortScanner, netlink_listeners, parse_proc_net_tcp

CHILD = r"""
import resource, socket, sys
listeners, connections = int(sys.argv[1]), int(sys.argv[2])
need = listeners + 2 * connections + 1 + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < need:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
held = []
for _ in range(listeners):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    held.append(s)
if connections:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    held.append(server)
    port = server.getsockname()[1]
    for _ in range(connections):
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = server.accept()
        held += [c, a]
print("ready", flush=True)
for line in sys.stdin:  # "open": one more listener, as a developer's new dev server
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    held.append(s)
    print("opened", flush=True)
"""


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000, min(samples) * 1000


def bare_read() -> None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        Path(table).read_bytes()


def parse_both() -> int:
    return sum(
        len(parse_proc_net_tcp(Path(t).read_text())) for t in ("/proc/net/tcp", "/proc/net/tcp6")
    )


def cold_scan() -> None:
    scanner = PortScanner(cache_seconds=0)
    scanner.scan()
    scanner.close()


def psutil_listeners() -> int:
    return sum(1 for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN)


def case(listeners: int, established: int, runs: int) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(listeners), str(established)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    warm = PortScanner(cache_seconds=0)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        found = len(warm.scan())
        counts = {
            "parse": parse_both(),
            "netlink": len(netlink_listeners()),
            "scan": found,
            "psutil": psutil_listeners(),
        }
        print(f"\n{listeners} listeners, {established} established connections; found {counts}")
        rows = {
            "read": timed(bare_read, runs),
            "parse": timed(parse_both, runs),
            "netlink": timed(netlink_listeners, runs),
            "scan": timed(warm.scan, runs),
            "scan-cold": timed(cold_scan, max(3, runs // 4)),
            "psutil": timed(psutil_listeners, max(3, runs // 4)),
        }
        assert child.stdin is not None and child.stdout is not None
        stdin, stdout = child.stdin, child.stdout

        def new_listener_scan() -> None:
            stdin.write("open\n")
            stdin.flush()
            assert stdout.readline().strip() == "opened"
            started = time.perf_counter()
            warm.scan()
            new_samples.append(time.perf_counter() - started)

        new_samples: list[float] = []
        timed(new_listener_scan, runs)
        rows["scan-new"] = (
            statistics.median(new_samples[1:]) * 1000,
            min(new_samples[1:]) * 1000,
        )
        base = rows["psutil"][0]
        print(f"{'':10} {'median ms':>10} {'best ms':>9} {'psutil/x':>9}")
        for name, (median, best) in rows.items():
            print(f"{name:10} {median:10.2f} {best:9.2f} {base / median:9.1f}")
    finally:
        warm.close()
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


async def endpoint(spaced: int) -> None:
    import httpx
    from pty_stack import running_stack

    async with running_stack() as stack:
        path = f"/api/v2/workspaceagents/{stack.agent_id}/listening-ports"
        async with httpx.AsyncClient(base_url=stack.url, headers=stack.headers) as client:

            async def once() -> float:
                started = time.perf_counter()
                response = await client.get(path)
                assert response.status_code == 200, response.text
                return (time.perf_counter() - started) * 1000

            await once()
            back_to_back = sorted([await once() for _ in range(50)])
            apart = []
            for _ in range(spaced):
                await asyncio.sleep(1.1)  # past the agent's cache: each request scans
                apart.append(await once())
    print("\nGET /listening-ports on loopback (server + agent subprocesses)")
    print(f"back to back: median {statistics.median(back_to_back):.1f} ms, "
          f"p99 {back_to_back[-1]:.1f} ms (50 requests)")  # fmt: skip
    print(f"1.1 s apart:  median {statistics.median(apart):.1f} ms, "
          f"max {max(apart):.1f} ms ({spaced} requests)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listeners", type=int, default=10_000)
    parser.add_argument("--established", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--endpoint", action="store_true", help="also time the server's answer")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs, RLIMIT_NOFILE {soft}/{hard}"
    )
    case(args.listeners, 0, args.runs)
    if args.established:
        case(50, args.established, args.runs)
    if args.endpoint:
        asyncio.run(endpoint(spaced=5))


if __name__ == "__main__":
    main()
