"""The PostgreSQL store's pool, schema, error mapping and background jobs.

Every method takes a connection from one bounded asyncpg pool (``pool_size``, default 10
per replica) with a bounded wait. A lost connection (the server restarted, the network
dropped) surfaces as :class:`StoreUnavailable`, which the HTTP layer answers with 503 and
Coder's JSON error body; asyncpg's pool replaces broken connections on the next acquire,
so the store recovers by itself once PostgreSQL is back.

The 30-day stats purge runs here as a periodic job rather than in the insert path: every
replica runs the timer, and a transaction-scoped advisory lock lets only one of them do
the delete at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from controlplane.store.base import StoreUnavailable
from controlplane.store.migrations import MIGRATIONS, MigrationError
from controlplane.store.tokencache import AuthCache

log = structlog.get_logger()

# A pooled connection or a plain one: the store's queries work on either.
Conn = asyncpg.Connection | PoolConnectionProxy

ACQUIRE_TIMEOUT: Final = 15.0
COMMAND_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 5.0
PURGE_INTERVAL: Final = 3600.0
STATS_RETENTION: Final = timedelta(days=30)
# Keys of pg_advisory_xact_lock: an arbitrary constant per job, shared by every replica.
MIGRATE_LOCK: Final = 0x77_73_61_01
PURGE_LOCK: Final = 0x77_73_61_02

# NOTIFY channels every replica listens on (controlplane.pgbus): a git-auth credential
# saved ("provider\nuser"), an agent's tokens revoked, startup-log lines appended (the
# agent id).
GITAUTH_CHANNEL: Final = "wsagent_gitauth"
REVOKED_CHANNEL: Final = "wsagent_revoked"
LOGS_CHANNEL: Final = "wsagent_logs"
# Sent by triggers (migration 7) when a token is deleted or its expiry changes, or a
# workspace gets a new build: every replica clears its token cache.
AUTH_CHANNEL: Final = "wsagent_auth"

# What a dead or restarting server looks like to asyncpg.
UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def parse_uuid(value: str) -> uuid.UUID | None:
    """IDs arrive from URLs and tokens: anything that is not a UUID matches no row."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return None


def sid(value: Any) -> str:
    return str(value)


def utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name,
            encoder=lambda v: json.dumps(v, separators=(",", ":")),
            decoder=json.loads,
            schema="pg_catalog",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool, beyond what asyncpg does
    anyway (roll back an open transaction, drop listeners): nothing. asyncpg's default
    reset is one more round trip per store call (``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL``): 17 % of the server's samples while agents start up. Pool
    connections hold no session state to undo: advisory locks are transaction-scoped
    (``pg_advisory_xact_lock``), nothing declares cursors outside a transaction, LISTEN
    has a connection of its own (``controlplane.pgbus``), and nothing runs ``SET``."""
    del conn


async def create_pool(url: str, *, size: int) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=size,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=COMMAND_TIMEOUT,
            timeout=CONNECT_TIMEOUT,
            # Idle connections go back after a while: a replica at rest holds one.
            max_inactive_connection_lifetime=60.0,
        )
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    except asyncpg.PostgresError as exc:  # e.g. the database does not exist
        raise StoreUnavailable(f"cannot use PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool


async def migrate(conn: Conn) -> int:
    """Bring the schema to the newest version under a lock every replica shares."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        current = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if current > len(MIGRATIONS):
            raise MigrationError(
                f"database schema version {current} is newer than this wsagent ({len(MIGRATIONS)})"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            await conn.execute(MIGRATIONS[version - 1].postgres)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return len(MIGRATIONS)


class PGBase:
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self.url = url
        self._closed = False
        self._jobs: list[asyncio.Task[None]] = []
        # Off until the replica's bus listens on AUTH_CHANNEL (controlplane.pgbus): without
        # it another replica's revocation would go unheard.
        self.auth_cache = AuthCache(enabled=False)

    async def auth_version(self) -> int | None:
        return self.auth_cache.version()

    @contextlib.asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        if self._closed:
            # A bug (use after close), not an outage: no 503 for it.
            raise RuntimeError("store is closed")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield conn
        except UNAVAILABLE as exc:
            # A pool wait that timed out says nothing (str(TimeoutError()) is empty).
            raise StoreUnavailable(
                f"PostgreSQL is unavailable: {str(exc) or type(exc).__name__}"
            ) from exc

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Conn]:
        async with self._conn() as conn, conn.transaction():
            yield conn

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._conn() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
            return row

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self._conn() as conn:
            status: str = await conn.execute(sql, *args)
            return status

    # ------------------------------------------------------------ background jobs

    def start_jobs(self, purge_interval: float = PURGE_INTERVAL) -> None:
        self._jobs.append(asyncio.create_task(self._purge_loop(purge_interval)))

    async def purge_stats(self, before: datetime) -> int | None:
        """Delete stats older than ``before``; None if another replica holds the job."""
        async with self._tx() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PURGE_LOCK):
                return None
            status: str = await conn.execute(
                "DELETE FROM agent_stats WHERE created_at < $1", before
            )
        return int(status.split()[-1])

    async def _purge_loop(self, interval: float) -> None:
        while True:
            try:
                deleted = await self.purge_stats(now() - STATS_RETENTION)
                if deleted:
                    log.info("store.stats_purged", rows=deleted)
            except Exception as exc:
                log.warning("store.purge_failed", error=str(exc))
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self._close_extra()
        try:
            await asyncio.wait_for(self._pool.close(), 10.0)
        except (TimeoutError, *UNAVAILABLE):
            self._pool.terminate()

    async def _close_extra(self) -> None:
        """Flush what a subclass batches before the pool closes."""
