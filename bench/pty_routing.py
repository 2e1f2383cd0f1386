"""What routing between replicas adds to a keystroke: /pty on the agent's replica beside
/pty on the other replica.

    .venv/bin/python bench/pty_routing.py [--keys 1000]

Two ``wsagent server`` replicas share a throwaway PostgreSQL (bench/fleet.py); the real
agent connects to replica 0. The same keystroke loop as bench/pty_latency.py (one key in
flight, ``cat >/dev/null``, echo awaited) runs through a /pty socket on replica 0 (same
replica) and on replica 1 (its set-up goes by NOTIFY to replica 0, the agent dials back to
replica 1, and the bytes go agent -> replica 1 -> client). Also the set-up time of each:
from opening /pty to the first echo.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

from fleet import start_fleet, start_pg
from pty_latency import remote, summary
from pty_stack import _env, _wait_connected
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parent.parent


def pty_url(base: str, agent_id: str, command: str) -> str:
    query = urlencode({"reconnect": str(uuid.uuid4()), "command": command})
    return f"{base.replace('http://', 'ws://')}/api/v2/workspaceagents/{agent_id}/pty?{query}"


async def setup_time(base: str, agent_id: str, headers: dict[str, str], rounds: int = 10) -> float:
    """Median ms from opening /pty (a new session each time) to the shell's first output."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        async with connect(pty_url(base, agent_id, "sh"), additional_headers=headers) as ws:
            await ws.recv()
            samples.append(time.perf_counter() - started)
    samples.sort()
    return samples[len(samples) // 2] * 1000


async def main(args: argparse.Namespace) -> None:
    from controlplane.admin import agent_spec, create_user, create_workspace
    from controlplane.store.pg import PostgresStore

    pg = await start_pg()
    with tempfile.TemporaryDirectory(prefix="wsagent-routing-") as tmp:
        store = await PostgresStore.open(pg.url(), jobs=False)
        try:
            _, token = await create_user(store, "bench")
            _, created = await create_workspace(
                store, "bench", "ws", [agent_spec({"name": "main"})]
            )
        finally:
            await store.close()
        agent_id, agent_token = created[0].record.id, created[0].token
        fleet = await start_fleet(pg, Path(tmp), 2, "--metrics-address", "")
        same, other = fleet.replica_urls
        home = Path(tmp) / "home"
        home.mkdir()
        (home / ".hushlogin").touch()
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wsagent", "agent",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=str(REPO),
            env=_env(
                CODER_AGENT_URL=same, CODER_AGENT_TOKEN=agent_token,
                CODER_AGENT_LOG_DIR=str(Path(tmp) / "logs"), CODER_AGENT_LOG_LEVEL="warning",
                HOME=str(home),
            ),
        )  # fmt: skip
        headers = {"Coder-Session-Token": token}
        try:
            await _wait_connected(same, token, agent_id)
            await _wait_connected(other, token, agent_id)
            results = {}
            for name, base in (("same replica", same), ("other replica", other)):
                url = pty_url(base, agent_id, args.command)
                results[name] = (
                    summary(await remote(url, headers, args.keys)),
                    await setup_time(base, agent_id, headers),
                )
        finally:
            agent.terminate()
            await agent.wait()
            await fleet.stop()
    print(f"keystroke round trip through /pty, {args.keys} keys, command {args.command!r}")
    for name, ((p50, p99), setup) in results.items():
        print(
            f"  {name:<14} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms"
            f"  set-up (open -> first output) {setup:6.1f} ms"
        )
    (s50, s99), _ = results["same replica"]
    (o50, o99), _ = results["other replica"]
    verdict = "ok" if o50 - s50 <= 1 else "MISSED"
    print(
        f"  routing adds: p50 {o50 - s50:6.3f} ms  p99 {o99 - s99:6.3f} ms"
        f" (goal p50 <= 1 ms) {verdict}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--command", default="cat >/dev/null")
    asyncio.run(main(parser.parse_args()))
