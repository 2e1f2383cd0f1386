"""CPU per SQLite write when many agents' reports arrive at once.

The stored stats report (``insert_stats``: one workspace update, the merge check, an
insert and the 30-day purge) from ``--agents`` agents, ``--concurrency`` in flight, as
handlers issue them under load. Measured in the process's CPU time, writer thread
included (so it holds on a shared machine), median of ``--rounds`` rounds.

    .venv/bin/python bench/store_writes.py [--agents 500] [--reports 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def main(args: argparse.Namespace) -> None:
    from agent.sdk.models import Stats
    from controlplane.admin import agent_spec, create_user, create_workspace
    from controlplane.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="wsagent-writes-") as tmp:
        store = await SQLiteStore.open(Path(tmp), durability=args.durability)
        try:
            user, _ = await create_user(store, "bench")
            spec = agent_spec({"name": "main"})
            agents = []
            for i in range(args.agents):
                _, created = await create_workspace(store, "bench", f"ws{i}", [spec])
                agents.append(created[0].record)
            stats = Stats.from_json(
                {"conns_by_proto": {"ssh": 1}, "num_comms": 1, "rx_bytes": 10, "tx_bytes": 10},
                "stats",
            )
            samples = []
            for _ in range(args.rounds):
                limit = asyncio.Semaphore(args.concurrency)

                async def one(i: int, limit: asyncio.Semaphore = limit) -> None:
                    async with limit:
                        agent = agents[i % len(agents)]
                        await store.insert_stats(agent, user.id, stats, datetime.now(UTC))

                started = time.process_time()
                await asyncio.gather(*(one(i) for i in range(args.reports)))
                samples.append((time.process_time() - started) / args.reports * 1e6)
        finally:
            await store.close()
    print(
        f"insert_stats, {args.agents} agents, {args.reports} reports x {args.rounds} rounds,"
        f" {args.concurrency} in flight, synchronous={args.durability}:"
        f" {statistics.median(samples):.1f} us CPU per report"
        f" (rounds: {', '.join(f'{s:.1f}' for s in samples)})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--reports", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--durability", choices=("normal", "full"), default="normal")
    asyncio.run(main(parser.parse_args()))
