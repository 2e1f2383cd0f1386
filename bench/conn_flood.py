"""Connection flood: /healthz latency while idle and half-sent connections hold sockets.

    .venv/bin/python bench/conn_flood.py [--idle 300] [--slow 100] [--probes 20]

Starts ``wsagent server`` with its open-file limit at 128 soft / 256 hard (systemd's
default soft limit, scaled down so the attack stays small), opens ``--idle`` connections
that never send a byte and ``--slow`` that send half a request head, then times
``--probes`` /healthz requests on fresh connections. Baseline in the same run: the same
probes before the flood. Bounded: 127.0.0.1 only, stops opening at the first failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 256))


async def _start(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "WSAGENT_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "server",
        "--data-dir",
        str(data_dir),
        "--address",
        "127.0.0.1:0",
        "--metrics-address",
        "off",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=str(REPO),
        preexec_fn=_limits,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while line := await proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "server.listening":
                return proc, str(event["url"])
    raise SystemExit("the server exited before listening")


async def _probe(url: str, n: int) -> tuple[list[float], int]:
    latencies, errors = [], 0
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=2, limits=limits) as client:
        for _ in range(n):
            start = time.perf_counter()
            try:
                response = await client.get("/healthz")
                response.raise_for_status()
                latencies.append((time.perf_counter() - start) * 1000)
            except httpx.HTTPError:
                errors += 1
    return latencies, errors


def _line(label: str, latencies: list[float], errors: int) -> str:
    if not latencies:
        return f"{label}: 0 answered, {errors} failed"
    return (
        f"{label}: {len(latencies)} answered, {errors} failed, "
        f"median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    proc, url = await _start(Path(tempfile.mkdtemp(prefix="conn-flood-")) / "data")
    port = int(url.rsplit(":", 1)[1])
    writers: list[asyncio.StreamWriter] = []
    try:
        print(_line("baseline (no flood)", *await _probe(url, args.probes)))
        for i in range(args.idle + args.slow):
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
            except (OSError, TimeoutError):
                break
            if i >= args.idle:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            writers.append(writer)
        print(f"flood: {len(writers)} sockets held (server hard limit 256 descriptors)")
        print(_line("during the flood", *await _probe(url, args.probes)))
    finally:
        for writer in writers:
            writer.close()
        proc.kill()
        await proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--slow", type=int, default=100)
    parser.add_argument("--probes", type=int, default=20)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this side holds the sockets
    asyncio.run(main(parser.parse_args()))
