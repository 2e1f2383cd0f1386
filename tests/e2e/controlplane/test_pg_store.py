"""What only the PostgreSQL store has: hashed tokens at rest, the purge job under an
advisory lock, batched writes, the database URL flag, and riding out an outage (503 with
Coder's error body, sockets kept, recovery without a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from agent.sdk.models import Stats
from controlplane.store.pg import PostgresStore
from controlplane.store.pg_base import PURGE_LOCK
from tests.conftest import ControlPlane, poll_until
from tests.e2e.controlplane.cli import Where, admin, wsagent
from tests.e2e.controlplane.conftest import ME, World, assert_error, make_world
from tests.pgserver import PgCluster

pytestmark = [pytest.mark.postgres_only, pytest.mark.e2e]


async def test_tokens_are_stored_only_as_hashes(world: World) -> None:
    conn = await asyncpg.connect(world.cp.config.database_url)
    try:
        stored = {r["hash"] for r in await conn.fetch("SELECT hash FROM user_tokens")}
        stored |= {r["hash"] for r in await conn.fetch("SELECT hash FROM agent_tokens")}
    finally:
        await conn.close()
    for token in (world.owner_token, world.agent_token, world.other_token):
        assert token not in stored
        assert hashlib.sha256(token.encode()).hexdigest() in stored


async def test_the_stats_purge_runs_on_one_replica_at_a_time(
    make_database: Callable[[], Awaitable[str]],
) -> None:
    url = await make_database()
    first = await PostgresStore.open(url, jobs=False)
    second = await PostgresStore.open(url, jobs=False)
    holder = await asyncpg.connect(url)
    try:
        user = await first.create_user("alice")
        ws = await first.create_workspace(user.id, "dev")
        from controlplane.store.records import AgentSpec

        agent = (await first.create_build(ws.id, [AgentSpec("main")]))[0].record
        now = datetime.now(UTC)
        await first.insert_stats(agent, user.id, Stats(rx_bytes=1), now - timedelta(days=31))
        await first.insert_stats(agent, user.id, Stats(rx_bytes=2), now)
        # Another replica is purging: this one skips its turn and deletes nothing.
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", PURGE_LOCK)
            assert await second.purge_stats(now - timedelta(days=30)) is None
        assert await second.purge_stats(now - timedelta(days=30)) == 1
        assert [s.rx_bytes for s in await first.list_stats(agent.id)] == [2]
    finally:
        await holder.close()
        await first.close()
        await second.close()


async def test_concurrent_stats_reports_share_one_insert(world_factory: Any) -> None:
    """Reports that arrive together are one multi-row INSERT: a statement-level trigger
    counts the INSERT statements on agent_stats. (No spacing: every report is a row.)"""
    world: World = await world_factory(stats_min_spacing=0)
    conn = await asyncpg.connect(world.cp.config.database_url)
    try:
        await conn.execute(
            """
            CREATE TABLE insert_statements (n integer NOT NULL);
            INSERT INTO insert_statements VALUES (0);
            CREATE FUNCTION count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN UPDATE insert_statements SET n = n + 1; RETURN NULL; END $$;
            CREATE TRIGGER count_insert AFTER INSERT ON agent_stats
                FOR EACH STATEMENT EXECUTE FUNCTION count_insert();
            """
        )
        async with world.agent() as client:
            responses = await asyncio.gather(
                *(client.post(f"{ME}/report-stats", json={"rx_bytes": n + 1}) for n in range(40))
            )
        assert all(r.status_code == 200 for r in responses)
        stats = await world.cp.store.list_stats(world.agent_id)
        assert sorted(s.rx_bytes for s in stats) == list(range(1, 41))
        statements = await conn.fetchval("SELECT n FROM insert_statements")
        # One per report (40) without batching; a loaded machine may split the burst.
        assert 1 <= statements <= 20, statements
    finally:
        await conn.close()


async def test_the_admin_cli_and_server_share_a_database_url(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    make_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
) -> None:
    where = Where(tmp_path / "unused", await make_database())
    created = await admin(where, "user", "create", "alice")
    cp = await make_control_plane(data_dir=where.data_dir, database_url=where.database_url)
    async with cp.http(created["session_token"]) as client:
        assert (await client.get("/api/v2/users/me")).status_code == 200
    assert not where.data_dir.exists()  # nothing written to the data directory

    bad = await wsagent("admin", "--database-url", "mysql://x", "user", "list")
    assert bad.code == 1
    assert "postgres://" in bad.stderr and "Traceback" not in bad.stderr


async def test_an_outage_is_503_and_the_store_recovers_without_a_restart(
    make_control_plane: Callable[..., Awaitable[ControlPlane]], tmp_path: Path
) -> None:
    cluster = PgCluster()
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        cp = await make_control_plane(database_url=cluster.url())
        world = await make_world(cp)
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{cp.url}{ME}/coordinate", headers={"Coder-Session-Token": world.agent_token}
            ) as socket,
        ):
            await asyncio.to_thread(cluster.stop)
            async with world.user() as client:
                body = assert_error(await client.get("/api/v2/users/me"), 503)
            assert "database" in body["message"]
            async with world.agent() as client:
                assert_error(await client.post(f"{ME}/report-stats", json={"rx_bytes": 1}), 503)
            assert not socket.closed  # agents keep their sockets through the outage

            await asyncio.to_thread(cluster.start)

            async def back() -> bool:
                async with world.user() as client:
                    return (await client.get("/api/v2/users/me")).status_code == 200

            await poll_until(back, timeout=20, message="the store did not recover")
            async with world.agent() as client:
                response = await client.post(f"{ME}/report-stats", json={"rx_bytes": 5})
            assert response.status_code == 200, response.text
            assert not socket.closed
            assert cp.server is not None and cp.store is not None
    finally:
        await asyncio.to_thread(cluster.destroy)


async def test_reports_within_the_spacing_merge_across_a_batch(world: World) -> None:
    """Reports that share one batched commit still merge into one row, as on SQLite."""
    async with world.agent() as client:
        responses = await asyncio.gather(
            *(client.post(f"{ME}/report-stats", json={"rx_bytes": n + 1}) for n in range(20))
        )
        assert all(r.status_code == 200 for r in responses)
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 1000})
    rows = await world.cp.store.list_stats(world.agent_id)
    assert [r.rx_bytes for r in rows] == [sum(range(1, 21)) + 1000]


async def test_a_batch_waits_for_the_one_before_to_commit(world: World) -> None:
    """The agent's first report is in a batch that cannot commit yet; the next report's
    batch must still merge into that row, not insert a second one (as it did when it began
    its own transaction and could not see the first batch's insert)."""
    locker = await asyncpg.connect(world.cp.config.database_url)
    waiting = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    try:
        # Each batch ends by updating its workspace's last_used_at: hold that row.
        locked = locker.transaction()
        await locked.start()
        await locker.execute("SELECT 1 FROM workspaces FOR UPDATE")
        async with world.agent() as client:
            first = asyncio.create_task(client.post(f"{ME}/report-stats", json={"rx_bytes": 1}))
            await poll_until(lambda: locker.fetchval(waiting), timeout=10)
            second = asyncio.create_task(client.post(f"{ME}/report-stats", json={"rx_bytes": 2}))
            # An absence can only be seen over time: a second batch that did not wait would
            # be blocked on the same row within this second.
            with contextlib.suppress(AssertionError):
                await poll_until(lambda: _at_least(locker.fetchval(waiting), 2), timeout=1)
            await locked.rollback()
            responses = await asyncio.gather(first, second)
        assert [r.status_code for r in responses] == [200, 200]
    finally:
        await locker.close()
    rows = await world.cp.store.list_stats(world.agent_id)
    assert [r.rx_bytes for r in rows] == [3]


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n


async def test_a_pooled_connection_comes_back_without_an_open_transaction(
    make_database: Callable[[], Awaitable[str]],
) -> None:
    """The pool skips asyncpg's reset query (a round trip per store call); a transaction
    left open by a caller that went away is still rolled back before reuse."""
    from controlplane.store.pg_base import create_pool

    pool = await create_pool(await make_database(), size=1)
    try:
        async with pool.acquire() as conn:
            first_pid = conn.get_server_pid()
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
            assert conn.is_in_transaction()
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == first_pid  # the same connection, reused
            assert not conn.is_in_transaction()
            exists = await conn.fetchval("SELECT to_regclass('pg_temp.left_open') IS NOT NULL")
            assert exists is False  # its transaction was rolled back, not committed
    finally:
        await pool.close()
