"""``wsagent admin migrate-store --to postgres://...``: copy a SQLite data directory into
an empty PostgreSQL database.

Every table the migrations created is copied row for row (token hashes, ids and stats ids
included, so sessions and agent tokens keep working), in foreign-key order, in ONE
PostgreSQL transaction: a failure leaves the target as it was. A target that already
holds any row is refused. Values are converted by the target column's type: SQLite's
ISO-8601 text to ``timestamptz``, JSON text to ``jsonb``, 0/1 to ``boolean``, text ids to
``uuid``. Both databases are brought to the newest schema first, so their tables match.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import asyncpg

from controlplane.store.base import StoreError
from controlplane.store.pg_base import UNAVAILABLE
from controlplane.store.sqlite_base import DB_NAME

SKIPPED = frozenset({"sqlite_sequence", "schema_version"})


class MigrateStoreError(StoreError):
    pass


def _converter(pg_type: str) -> Any:
    if pg_type == "uuid":
        return lambda v: None if v is None else uuid.UUID(str(v))
    if pg_type == "timestamp with time zone":
        return lambda v: None if v is None else datetime.fromisoformat(v).astimezone(UTC)
    if pg_type in ("jsonb", "json"):
        # SQLite holds the JSON text; the plain connection sends it as is (checked here).
        return lambda v: None if v is None else json.dumps(json.loads(v))
    if pg_type == "boolean":
        return lambda v: None if v is None else bool(v)
    return lambda v: v


async def _tables_in_order(conn: asyncpg.Connection) -> list[str]:
    """The target's tables, each after the tables its foreign keys point to."""
    tables = [
        r["table_name"]
        for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
        if r["table_name"] not in SKIPPED
    ]
    graph: dict[str, set[str]] = {t: set() for t in tables}
    for r in await conn.fetch(
        "SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent"
        " FROM pg_constraint c WHERE c.contype = 'f'"
    ):
        if r["child"] in graph and r["parent"] in graph and r["child"] != r["parent"]:
            graph[r["child"]].add(r["parent"])
    return list(TopologicalSorter(graph).static_order())


async def migrate_store(data_dir: Path, url: str) -> dict[str, int]:
    """Copy ``data_dir``'s SQLite database into the PostgreSQL database at ``url``;
    returns the rows copied per table."""
    from controlplane.store.pg import PostgresStore
    from controlplane.store.sqlite import SQLiteStore

    path = data_dir / DB_NAME
    if not path.is_file():
        raise MigrateStoreError(f"no database at {path} (is --data-dir right?)")
    # Both at the newest schema, so the tables and columns match.
    await (await SQLiteStore.open(data_dir)).close()
    await (await PostgresStore.open(url, pool_size=1, jobs=False)).close()

    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    source.row_factory = sqlite3.Row
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except UNAVAILABLE as exc:
        source.close()
        raise MigrateStoreError(f"cannot connect to PostgreSQL: {exc}") from exc
    counts: dict[str, int] = {}
    try:
        async with conn.transaction():
            tables = await _tables_in_order(conn)
            for table in tables:
                if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'):
                    raise MigrateStoreError(
                        f"the target database is not empty (table {table} has rows);"
                        " migrate-store only copies into an empty database"
                    )
            for table in tables:
                try:
                    counts[table] = await _copy_table(source, conn, table)
                except (asyncpg.PostgresError, ValueError, TypeError) as exc:
                    raise MigrateStoreError(f"copying {table}: {exc}") from exc
            for table, column in await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND is_identity = 'YES'"
            ):
                # Copied ids were explicit: the next generated one follows the largest.
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f' COALESCE((SELECT max("{column}") FROM "{table}"), 0) + 1, false)'
                )
    finally:
        source.close()
        await conn.close()
    return counts


async def _copy_table(source: sqlite3.Connection, conn: asyncpg.Connection, table: str) -> int:
    types = {
        r["column_name"]: r["data_type"]
        for r in await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = $1",
            table,
        )
    }
    exists = source.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)
    ).fetchone()
    if exists is None:
        return 0
    columns = [c[1] for c in source.execute(f'PRAGMA table_info("{table}")') if c[1] in types]
    converters = [_converter(types[c]) for c in columns]
    quoted = ", ".join(f'"{c}"' for c in columns)
    cursor = source.execute(f'SELECT {quoted} FROM "{table}"')
    total = 0
    while batch := cursor.fetchmany(1000):
        records = [tuple(f(v) for f, v in zip(converters, row, strict=True)) for row in batch]
        await conn.copy_records_to_table(table, records=records, columns=columns)
        total += len(records)
    return total
