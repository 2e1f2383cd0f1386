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
import collections
import functools
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


# A write waiting for the writer thread: what to run, whether it is a transaction's body
# (``_tx``: grouped with its neighbours), and its caller's future; and what came of it.
_Queued = tuple[Callable[..., Any], bool, "asyncio.Future[Any]"]
_Outcome = tuple[bool, Any]


class SQLiteBase:
    def __init__(self, path: Path, *, durability: str = "normal") -> None:
        self.path = path
        self._durability = durability
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._writer_thread = -1
        self._closed = False
        # Writes waiting for the writer thread; whether it has a group in hand.
        self._queue: collections.deque[_Queued] = collections.deque()
        self._committing = False
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
        """Run ``fn`` on the writer thread, after every write asked for before it.

        ``_run(self._tx, op)`` (every write) joins a group commit: the writes that arrive
        while the writer thread is busy are committed together, each in a savepoint of
        one transaction, when it is free again. One waiting write is the old single
        transaction; under load a burst of reports costs one thread hand-off and one
        commit instead of one each (docs/benchmarks.md, "Control plane")."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        if fn == self._tx:
            self._queue.append((args[0], True, done))
        else:
            self._queue.append((functools.partial(fn, *args), False, done))
        if not self._committing:
            self._hand_over(loop)
        result: T = await done
        return result

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the writer thread the next group (on the loop; no task, no extra future)."""
        batch: list[_Queued] = []
        # Consecutive writes go together; anything else (open, close) alone, in order.
        while self._queue and (not batch or (batch[0][1] and self._queue[0][1])):
            item = self._queue.popleft()
            if not item[2].cancelled():  # as an executor job cancelled before it ran
                batch.append(item)
            if not item[1]:
                break
        if not batch:
            self._committing = False
            return
        self._committing = True
        try:
            self._executor.submit(self._work, loop, batch)
        except RuntimeError as exc:  # the store was closed: fail these, never leave them hanging
            self._committing = False
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)

    def _work(self, loop: asyncio.AbstractEventLoop, batch: list[_Queued]) -> None:
        outcomes: list[_Outcome]
        try:
            if batch[0][1]:
                outcomes = self._tx_group([op for op, _, _ in batch])
            else:
                outcomes = [(True, batch[0][0]())]
        except BaseException as exc:  # the commit itself failed: every write in it
            outcomes = [(False, exc)] * len(batch)
        try:
            loop.call_soon_threadsafe(self._settle, loop, batch, outcomes)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _settle(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Queued], outcomes: list[_Outcome]
    ) -> None:
        for (_, _, done), (ok, value) in zip(batch, outcomes, strict=True):
            if done.done():
                continue
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)
        self._hand_over(loop)

    def _tx_group(self, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[_Outcome]:
        """One transaction for ``ops``, each in a savepoint: one op's error undoes only its
        own changes and is its caller's, as with a transaction of its own."""
        if len(ops) == 1:
            try:
                return [(True, self._tx(ops[0]))]
            except Exception as exc:
                return [(False, exc)]
        conn = self.conn
        outcomes: list[_Outcome] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((True, value))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return outcomes

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
