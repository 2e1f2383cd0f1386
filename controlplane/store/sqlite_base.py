"""The SQLite connections, the writer thread and shared helpers for the store's parts.

Writes: one connection owned by one worker thread; every write transaction runs there in
order, so writes are serialised without locks in the handlers, and a commit (or, with
``durability="full"``, an fsync) never blocks the event loop. WAL with
``synchronous=NORMAL`` keeps every committed write across a process crash or ``kill -9``
(only power loss can drop the last transactions; ``synchronous=FULL`` covers that).

Reads: a second, query-only connection used inline on the event loop. In WAL mode a reader
never waits for the writer, and a point lookup costs tens of microseconds, far less than
the two thread hand-offs (and GIL hand-backs) a round trip through the worker costs; the
handlers' several lookups per request made those hand-offs the bottleneck (see
docs/benchmarks.md, "Control plane"). A read sees every write committed before it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from controlplane.store.migrations import migrate
from controlplane.store.tokencache import AuthCache

T = TypeVar("T")

DB_NAME: Final = "wsagent.db"


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    # Always written by _ts. fromisoformat reads it 50x faster than strptime, which was a
    # quarter of GET /me/metadata's server time.
    return datetime.fromisoformat(value).astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _req_dt(value: str) -> datetime:
    parsed = _dt(value)
    assert parsed is not None
    return parsed


class SQLiteBase:
    def __init__(self, path: Path, *, durability: str = "normal") -> None:
        self.path = path
        self._durability = durability
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer_thread = -1
        self._closed = False
        # One process holds the database's writer; the counter read before each lookup
        # catches other processes' changes (wsagent admin), so the cache is always on.
        self.auth_cache = AuthCache(enabled=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The database holds git credentials and SSH keys: create it 0600.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=" + ("FULL" if self._durability == "full" else "NORMAL"))
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        migrate(conn)
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.row_factory = sqlite3.Row
        reader.execute("PRAGMA query_only=ON")
        # Readers wait only in rare cases (WAL recovery); never stall the loop for long.
        reader.execute("PRAGMA busy_timeout=1000")
        self._writer_thread = threading.get_ident()
        self._conn, self._reader = conn, reader

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the writer thread (write transactions)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read-only ``fn`` inline, on the reader connection."""
        if self._reader is None:
            raise sqlite3.ProgrammingError("store is closed")
        return fn(*args)

    @property
    def conn(self) -> sqlite3.Connection:
        """The writer's connection on the writer thread, the reader's anywhere else."""
        if threading.get_ident() == self._writer_thread:
            assert self._conn is not None, "store is closed"
            return self._conn
        if self._reader is None:
            raise sqlite3.ProgrammingError("store is closed")
        return self._reader

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        if self._closed:  # idempotent: a test or a shutdown path may close twice
            return
        self._closed = True

        if self._reader is not None:
            self._reader.close()
            self._reader = None

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(_close)
        self._executor.shutdown(wait=True)
