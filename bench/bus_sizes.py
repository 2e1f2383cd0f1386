"""What a routed message costs on the replicas' bus (controlplane/pgbus.py), by size.

Starts a throwaway PostgreSQL cluster (tests/pgserver.py) and two buses in this process,
as replicas B and A. B sends a request for an agent whose socket is "on A"; A's
coordinator answers at once with a reply of the same size, which goes back to B: one
B -> A -> B round trip through NOTIFY, without sockets to an agent. Messages up to one
NOTIFY payload go whole; larger ones go as chunks in one transaction and are put back
together on the other side. Prints the round trip's p50 and p95 per size, and B's and A's
CPU together per round trip.

    .venv/bin/python bench/bus_sizes.py [--rounds 200] [--sizes 200,4000,7000,60000,1000000]

Run it with ``PYTHONPATH`` set to another checkout to time that checkout's bus (sizes it
cannot carry are reported as failing).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH wins

from controlplane.coordinator import Coordinator
from controlplane.gitauth import GitAuthNotifier
from controlplane.pgbus import PgBus
from controlplane.store.pg import PostgresStore
from tests.pgserver import PgCluster

AGENT = str(uuid.uuid4())


class Echo(Coordinator):
    """Replica A: the "agent" answers every request with its own payload."""

    async def deliver_to_agent(self, agent_id: str, payload: object, origin: str) -> None:
        assert self.bus is not None and isinstance(payload, dict)
        await self.bus.reply(origin, agent_id, payload)


class Asker(Coordinator):
    """Replica B: replies resolve the waiting futures."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def deliver_from_agent(self, agent_id: str, value: dict[str, Any]) -> None:
        future = self.waiting.pop(str(value.get("request_id")), None)
        if future is not None and not future.done():
            future.set_result(value)


async def round_trip(bus: PgBus, asker: Asker, replica_a: str, size: int) -> float:
    request_id = str(uuid.uuid4())
    payload = {"type": "echo", "request_id": request_id, "data": "x" * size}
    future = asyncio.get_running_loop().create_future()
    asker.waiting[request_id] = future
    started = time.perf_counter()
    await bus.to_agent(replica_a, AGENT, payload)
    value = await asyncio.wait_for(future, 10.0)
    elapsed = time.perf_counter() - started
    if value.get("data") != payload["data"]:
        raise RuntimeError(f"reply came back altered: {str(value)[:200]}")
    return elapsed


async def main(args: argparse.Namespace) -> None:
    cluster = PgCluster()
    await asyncio.to_thread(cluster.init)
    await asyncio.to_thread(cluster.start)
    try:
        url = cluster.url()
        store = await PostgresStore.open(url, jobs=False)  # the schema
        await store.close()
        echo, asker = Echo(), Asker()
        bus_a = PgBus(url, "bench-a", echo, GitAuthNotifier(), stale_after=6.0)
        bus_b = PgBus(url, "bench-b", asker, GitAuthNotifier(), stale_after=6.0)
        echo.bus, asker.bus = bus_a, bus_b
        await bus_a.start()
        await bus_b.start()
        try:
            print(f"{'size':>9}  {'p50 ms':>7}  {'p95 ms':>7}  {'CPU ms/trip':>11}  rounds")
            for size in args.sizes:
                rounds = args.rounds if size < 100_000 else max(5, args.rounds // 20)
                samples = []
                try:
                    for _ in range(3):  # warm-up: pools, prepared statements
                        await round_trip(bus_b, asker, "bench-a", size)
                    cpu = time.process_time()
                    for _ in range(rounds):
                        samples.append(await round_trip(bus_b, asker, "bench-a", size))
                except Exception as exc:
                    print(f"{size:>9}  fails: {type(exc).__name__}: {str(exc)[:80]}")
                    continue
                cpu = (time.process_time() - cpu) / rounds * 1000
                samples.sort()
                p50 = samples[len(samples) // 2] * 1000
                p95 = samples[int(len(samples) * 0.95) - 1] * 1000
                print(f"{size:>9}  {p50:7.2f}  {p95:7.2f}  {cpu:11.2f}  {rounds}")
        finally:
            await bus_b.close()
            await bus_a.close()
    finally:
        await asyncio.to_thread(cluster.destroy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[200, 4000, 7000, 60_000, 1_000_000],
    )
    asyncio.run(main(parser.parse_args()))
