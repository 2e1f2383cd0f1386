"""asyncpg against psycopg 3 (async) for the store's typical statements.

Starts a throwaway PostgreSQL cluster (tests/pgserver.py), creates a table like ``agents``
with 2,000 rows, then times with each driver, through a pool of 4 connections:
- a point lookup by uuid primary key (the handlers' most frequent query), 16 at a time;
- the batched refresh: one ``UPDATE ... FROM unnest($1::uuid[])`` over 500 agents.
Prints microseconds per operation (median of 5 rounds) and the client process's CPU.

    .venv/bin/python bench/pg_drivers.py [--lookups 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.pgserver import PgCluster

ROWS = 2000
BATCH = 500
SETUP = """
CREATE TABLE agents (id uuid PRIMARY KEY, name text NOT NULL, spec jsonb NOT NULL,
    last_connected_at timestamptz);
"""


async def _asyncpg(url: str, ids: list[uuid.UUID], lookups: int) -> dict[str, float]:
    import asyncpg

    pool = await asyncpg.create_pool(url, min_size=4, max_size=4)
    assert pool is not None

    async def lookup(agent_id: uuid.UUID) -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchrow("SELECT * FROM agents WHERE id=$1", agent_id)

    async def batch(batch_ids: list[uuid.UUID]) -> None:
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE agents SET last_connected_at=now() FROM unnest($1::uuid[]) AS u(id)"
                " WHERE agents.id=u.id",
                batch_ids,
            )

    try:
        return await _measure(ids, lookups, lookup, batch)
    finally:
        await pool.close()


async def _psycopg(url: str, ids: list[uuid.UUID], lookups: int) -> dict[str, float]:
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(url, min_size=4, max_size=4, open=False)
    await pool.open()

    async def lookup(agent_id: uuid.UUID) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT * FROM agents WHERE id=%s", (agent_id,))
            return await cur.fetchone()

    async def batch(batch_ids: list[uuid.UUID]) -> None:
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE agents SET last_connected_at=now() FROM unnest(%s::uuid[]) AS u(id)"
                " WHERE agents.id=u.id",
                (batch_ids,),
            )

    try:
        return await _measure(ids, lookups, lookup, batch)
    finally:
        await pool.close()


async def _measure(ids: list[uuid.UUID], lookups: int, lookup: Any, batch: Any) -> dict[str, float]:
    rounds_lookup, rounds_batch = [], []
    cpu0 = time.process_time()
    for _ in range(5):
        start = time.perf_counter()
        for i in range(0, lookups, 16):
            await asyncio.gather(*(lookup(ids[(i + j) % len(ids)]) for j in range(16)))
        rounds_lookup.append((time.perf_counter() - start) / lookups * 1e6)
        start = time.perf_counter()
        for i in range(4):
            await batch(ids[i * BATCH : (i + 1) * BATCH])
        rounds_batch.append((time.perf_counter() - start) / 4 * 1e6)
    cpu = (time.process_time() - cpu0) / (5 * lookups) * 1e6
    return {
        "lookup_us": statistics.median(rounds_lookup),
        "batch_500_us": statistics.median(rounds_batch),
        "client_cpu_us_per_lookup": cpu,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lookups", type=int, default=4000)
    args = parser.parse_args()
    import asyncpg

    with PgCluster() as cluster:
        url = cluster.url()
        conn = await asyncpg.connect(url)
        await conn.execute(SETUP)
        ids = [uuid.uuid4() for _ in range(ROWS)]
        await conn.executemany(
            "INSERT INTO agents (id, name, spec) VALUES ($1, $2, '{\"a\": 1}')",
            [(i, f"agent-{n}") for n, i in enumerate(ids)],
        )
        await conn.close()
        for name, run in (("asyncpg", _asyncpg), ("psycopg3", _psycopg)):
            result = await run(url, ids, args.lookups)
            print(name, " ".join(f"{k}={v:.1f}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
