"""CPU per token lookup and per connection refresh, with and without the token cache.

What every agent request and every 3 s connection refresh pays to authenticate, measured
in the process's own CPU time (so it holds on a machine shared with other work, where
wall-clock rates do not): a store with ``--agents`` agents, then ``--lookups`` lookups of
random agents' tokens, each way, median of ``--rounds`` rounds.

- ``agent_by_token``: cache off (the join and the record built from it, as before the
  cache) against a cache hit (SQLite: the change counter read first; PostgreSQL: nothing).
- the refresh's checks: the build (``get_workspace``) and the token, every time, against
  ``auth_version`` unchanged (build check skipped) and a cache hit.

    .venv/bin/python bench/auth_path.py [--agents 2000] [--lookups 20000] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def _prepare(store: Any, count: int) -> list[tuple[str, str]]:
    from controlplane.admin import agent_spec, create_user, create_workspace

    await create_user(store, "bench")
    spec = agent_spec({"name": "main", "apps": [{"slug": "web", "url": "http://localhost:1/"}]})
    tokens = []
    for i in range(count):
        _, created = await create_workspace(store, "bench", f"ws{i}", [spec])
        tokens.append((created[0].token, created[0].record.workspace_id))
    return tokens


async def _cpu_per_op(op: Callable[[], Awaitable[None]], count: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            await op()
        samples.append((time.process_time() - started) / count * 1e6)
    return statistics.median(samples)


async def measure(store: Any, tokens: list[tuple[str, str]], args: argparse.Namespace) -> None:
    rng = random.Random(1)
    picks = [rng.choice(tokens) for _ in range(args.lookups)]
    cache = store.auth_cache
    index = [0]

    def next_pick() -> tuple[str, str]:
        index[0] = (index[0] + 1) % len(picks)
        return picks[index[0]]

    async def lookup() -> None:
        assert await store.agent_by_token(next_pick()[0]) is not None

    checked: list[int | None] = [None]

    async def refresh_always() -> None:
        token, workspace_id = next_pick()
        assert await store.get_workspace(workspace_id) is not None
        assert await store.agent_by_token(token) is not None

    async def refresh_cached() -> None:
        token, workspace_id = next_pick()
        version = await store.auth_version()
        if version is None or version != checked[0]:
            assert await store.get_workspace(workspace_id) is not None
            checked[0] = version
        assert await store.agent_by_token(token) is not None

    cache.disable()
    off = await _cpu_per_op(lookup, args.lookups, args.rounds)
    refresh_off = await _cpu_per_op(refresh_always, args.lookups, args.rounds)
    cache.enable()
    for token, _ in tokens:  # warm: every agent has made one request
        await store.agent_by_token(token)
    on = await _cpu_per_op(lookup, args.lookups, args.rounds)
    refresh_on = await _cpu_per_op(refresh_cached, args.lookups, args.rounds)
    name = type(store).__name__
    print(f"{name}, {len(tokens)} agents, {args.lookups} lookups x {args.rounds} rounds:")
    print(f"  agent_by_token  cache off {off:7.1f} us CPU   cache hit {on:7.1f} us CPU")
    print(f"  refresh checks  always    {refresh_off:7.1f} us CPU   skipped   {refresh_on:7.1f} us")


async def main(args: argparse.Namespace) -> None:
    from controlplane.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="wsagent-auth-") as tmp:
        store = await SQLiteStore.open(Path(tmp))
        try:
            await measure(store, await _prepare(store, args.agents), args)
        finally:
            await store.close()
    if args.postgres:
        from controlplane.store.pg import PostgresStore
        from tests.pgserver import PgCluster

        with PgCluster() as cluster:
            store = await PostgresStore.open(cluster.url("postgres"), jobs=False)
            try:
                await measure(store, await _prepare(store, args.agents), args)
            finally:
                await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--lookups", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="also PostgreSQL (local)")
    asyncio.run(main(parser.parse_args()))
