"""Throughput of ``cat`` of a large file through /pty, beside a local PTY.

    .venv/bin/python bench/pty_throughput.py [--mib 256]

A file of ``--mib`` MiB of text lines is written to a temp directory. Through the stack:
the client opens /pty with ``command=cat FILE`` and reads binary messages until the session
closes ("process exited with code 0"); the clock runs from the WebSocket open to the close,
so session start-up is included. Baseline in the same run: ``cat FILE`` on a local PTY
whose master is read directly with blocking ``os.read`` (no event loop, no network), the
fastest a reader can drain the same output. Both count the bytes that come out of the PTY
(the line discipline turns each ``\\n`` into ``\\r\\n``); MB/s are 10^6 bytes per second,
the unit of Coder's published speed-test figure (about 46 MB/s). The CPU time each process
spends per MB (agent, server, this client; user + system from /proc/<pid>/stat) is printed
beside the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from pty_stack import running_stack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

LINE = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:99] + b"\n"


def write_file(path: Path, mib: int) -> int:
    block = LINE * (1 << 20 // len(LINE) + 1)
    block = block[: (1 << 20) // len(LINE) * len(LINE)]
    total = 0
    with path.open("wb") as f:
        while total < mib << 20:
            f.write(block)
            total += len(block)
    return total


async def through_pty(url: str, headers: dict[str, str]) -> tuple[int, int, float, str]:
    received = messages = 0
    started = time.perf_counter()
    async with connect(url, additional_headers=headers, compression=None, max_size=1 << 22) as ws:
        try:
            async for message in ws:
                received += len(message)
                messages += 1
        except ConnectionClosed:
            pass
        elapsed = time.perf_counter() - started
        rcvd = ws.protocol.close_rcvd
    return received, messages, elapsed, rcvd.reason if rcvd else "no close frame"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, all threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_pty(path: Path) -> tuple[int, float]:
    from ptyprocess import PtyProcess

    started = time.perf_counter()
    proc = PtyProcess.spawn(["cat", str(path)], dimensions=(24, 80))
    received = 0
    while True:
        try:
            data = os.read(proc.fd, 1 << 16)
        except OSError:  # EIO: the slave side is closed and everything was read
            break
        if not data:
            break
        received += len(data)
    elapsed = time.perf_counter() - started
    proc.wait()
    proc.close()
    return received, elapsed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="wsagent-ptytput-") as tmp:
        path = Path(tmp) / "big.txt"
        size = write_file(path, args.mib)
        async with running_stack() as stack:
            pids = (stack.agent.pid, stack.server.pid)
            before = [cpu_seconds(p) for p in pids] + [time.process_time()]
            url = stack.pty_url(f"cat {path}")
            got, messages, secs, reason = await through_pty(url, stack.headers)
            after = [cpu_seconds(p) for p in pids] + [time.process_time()]
        local_cpu = time.process_time()
        local_got, local_secs = local_pty(path)
        local_cpu = time.process_time() - local_cpu
    mb = got / 1e6
    spent = [(a - b) * 1000 / mb for a, b in zip(after, before, strict=True)]
    agent_ms, server_ms, client_ms = spent
    print(f"cat of a {size / (1 << 20):.0f} MiB file ({size} bytes of text lines)")
    print(
        f"  through /pty (server + agent): {got / secs / 1e6:7.1f} MB/s"
        f"  ({got} bytes in {secs:.2f} s; closed: {reason})"
    )
    per_message = got / max(messages, 1) / 1024
    print(f"  messages received: {messages} ({per_message:.1f} KiB each on average)")
    print(
        f"  local PTY, read directly:      {local_got / local_secs / 1e6:7.1f} MB/s"
        f"  ({local_got} bytes in {local_secs:.2f} s)"
    )
    print(
        f"  CPU per MB: agent {agent_ms:.2f} ms, server {server_ms:.2f} ms, client"
        f" {client_ms:.2f} ms; the local reader {local_cpu * 1000 / (local_got / 1e6):.2f} ms"
    )
    ratio = (got / secs) / (local_got / local_secs)
    print(f"  /pty at {ratio:.0%} of the direct read (goal >= 80 %)")
    verdict = "ok" if got / secs / 1e6 >= 50 else "MISSED"
    print(f"  goal >= 50 MB/s through /pty: {verdict}; lossless: {got == local_got}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    asyncio.run(main(parser.parse_args()))
