"""Keystroke round trip through the control plane and the agent, beside a local PTY.

    .venv/bin/python bench/pty_latency.py [--keys 2000] [--command 'cat >/dev/null']

A keystroke goes client → server (/pty) → agent (dial-back socket) → PTY, and its echo
comes back the same way. The remote program is ``cat >/dev/null`` in canonical mode, so the
only output is the kernel line discipline's echo, the same in both columns: the difference
between the two columns is what the network path adds. Each key is sent after the previous
echo arrived (one in flight, as a typist); a carriage return every 64 keys keeps the line
short.

Baseline, in the same run: the same keys written to the master side of a local PTY
running the same command, waiting for each echo with the same asyncio reader.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import string
import time

from pty_stack import running_stack
from websockets.asyncio.client import connect

from agent.sdk.pty import ReconnectingPTYRequest

KEYS = string.ascii_lowercase


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def remote(stack_url: str, headers: dict[str, str], keys: int) -> list[float]:
    async with connect(stack_url, additional_headers=headers, compression=None) as ws:
        samples = []
        for i in range(keys + 50):
            key = "\r" if i % 64 == 63 else KEYS[i % len(KEYS)]
            started = time.perf_counter()
            await ws.send(ReconnectingPTYRequest(key).encode())
            want = b"\r\n" if key == "\r" else key.encode()
            got = b""
            while not got.endswith(want):
                got += await ws.recv()  # type: ignore[operator]
            if i >= 50 and key != "\r":  # the first 50 warm the path up
                samples.append(time.perf_counter() - started)
        return samples


async def local(command: str, keys: int) -> list[float]:
    from ptyprocess import PtyProcess

    proc = PtyProcess.spawn(["/bin/sh", "-c", command])
    fd = proc.fd
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    samples = []
    try:
        for i in range(keys + 50):
            key = b"\r" if i % 64 == 63 else KEYS[i % len(KEYS)].encode()
            want = b"\r\n" if key == b"\r" else key
            started = time.perf_counter()
            os.write(fd, key)
            got = b""
            while not got.endswith(want):
                readable.clear()
                try:
                    got += os.read(fd, 4096)
                except BlockingIOError:
                    await readable.wait()
            if i >= 50 and key != b"\r":
                samples.append(time.perf_counter() - started)
    finally:
        loop.remove_reader(fd)
        proc.terminate(force=True)
    return samples


async def main(args: argparse.Namespace) -> None:
    async with running_stack() as stack:
        through = await remote(stack.pty_url(args.command), stack.headers, args.keys)
    direct = await local(args.command, args.keys)
    (rp50, rp99), (lp50, lp99) = summary(through), summary(direct)
    print(f"keystroke round trip, {len(through)} keys, command {args.command!r}")
    print(f"  through /pty (server + agent): p50 {rp50:6.3f} ms  p99 {rp99:6.3f} ms")
    print(f"  local PTY, no network:         p50 {lp50:6.3f} ms  p99 {lp99:6.3f} ms")
    verdict = "ok" if rp99 - lp99 <= 5 else "MISSED"
    print(f"  added: p50 {rp50 - lp50:6.3f} ms  p99 {rp99 - lp99:6.3f} ms (goal <= 5 ms) {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--command", default="cat >/dev/null")
    asyncio.run(main(parser.parse_args()))
