"""Pick the store from the configuration: PostgreSQL when a database URL is given, else
SQLite in the data directory (the zero-setup default)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from controlplane.store.base import Store, StoreError

POSTGRES_SCHEMES = ("postgres://", "postgresql://")


def check_database_url(url: str) -> str:
    if not url.startswith(POSTGRES_SCHEMES):
        raise StoreError(
            f"--database-url must start with postgres:// or postgresql://, got {url[:20]!r}"
        )
    return url


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


async def open_store(
    data_dir: Path,
    database_url: str = "",
    *,
    durability: str = "normal",
    pool_size: int = 10,
    jobs: bool = True,
) -> Store:
    if database_url:
        # Imported only here: SQLite deployments never load asyncpg.
        from controlplane.store.pg import PostgresStore

        return await PostgresStore.open(
            check_database_url(database_url), pool_size=pool_size, jobs=jobs
        )
    from controlplane.store.sqlite import SQLiteStore

    return await SQLiteStore.open(data_dir, durability=durability)
