"""Versioned schema migrations: one numbered step, a SQLite form and a PostgreSQL form.

SQLite tracks the version in ``PRAGMA user_version``; PostgreSQL in the ``schema_version``
table (``controlplane.store.pg_base``). The two forms of a step describe the same tables
with each database's types (PostgreSQL: ``uuid``, ``timestamptz``, ``jsonb``). Append new
steps, with both forms side by side; never edit a released one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Migration:
    sqlite: str
    postgres: str


MIGRATIONS: Final[tuple[Migration, ...]] = (
    # 1: users, workspaces, builds' agents, tokens, apps, stats, git auth.
    Migration(
        sqlite="""
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        email TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL
    );
    CREATE TABLE user_tokens (
        hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        expires_at TEXT
    );
    CREATE TABLE git_ssh_keys (
        user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        public_key TEXT NOT NULL,
        private_key TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE workspaces (
        id TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL,
        latest_build INTEGER NOT NULL DEFAULT 0,
        last_used_at TEXT,
        UNIQUE (owner_id, name)
    );
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        workspace_id TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
        build_number INTEGER NOT NULL,
        resource_id TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        auth_instance_id TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        lifecycle_state TEXT NOT NULL DEFAULT 'created',
        version TEXT NOT NULL DEFAULT '',
        expanded_directory TEXT NOT NULL DEFAULT '',
        first_connected_at TEXT,
        last_connected_at TEXT,
        disconnected_at TEXT
    );
    CREATE INDEX agents_instance ON agents (auth_instance_id);
    CREATE INDEX agents_workspace ON agents (workspace_id, build_number);
    CREATE TABLE agent_tokens (
        hash TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT
    );
    CREATE INDEX agent_tokens_agent ON agent_tokens (agent_id, kind, created_at);
    CREATE TABLE apps (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        slug TEXT NOT NULL,
        spec TEXT NOT NULL,
        health TEXT NOT NULL,
        UNIQUE (agent_id, slug)
    );
    CREATE TABLE agent_stats (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        workspace_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        conns_by_proto TEXT NOT NULL,
        num_comms INTEGER NOT NULL,
        rx_packets INTEGER NOT NULL,
        rx_bytes INTEGER NOT NULL,
        tx_packets INTEGER NOT NULL,
        tx_bytes INTEGER NOT NULL
    );
    CREATE INDEX agent_stats_agent ON agent_stats (agent_id, created_at);
    CREATE TABLE gitauth_providers (
        id TEXT PRIMARY KEY,
        regex TEXT NOT NULL,
        type TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL
    );
    CREATE TABLE gitauth_links (
        provider_id TEXT NOT NULL REFERENCES gitauth_providers(id) ON DELETE CASCADE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        username TEXT NOT NULL,
        password TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        expires_at TEXT,
        PRIMARY KEY (provider_id, user_id)
    );
    """,
        postgres="""
    CREATE TABLE users (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE,
        email text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL
    );
    CREATE TABLE user_tokens (
        hash text PRIMARY KEY,
        user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at timestamptz NOT NULL,
        expires_at timestamptz
    );
    CREATE TABLE git_ssh_keys (
        user_id uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        public_key text NOT NULL,
        private_key text NOT NULL,
        created_at timestamptz NOT NULL
    );
    CREATE TABLE workspaces (
        id uuid PRIMARY KEY,
        owner_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name text NOT NULL,
        created_at timestamptz NOT NULL,
        latest_build integer NOT NULL DEFAULT 0,
        last_used_at timestamptz,
        UNIQUE (owner_id, name)
    );
    CREATE TABLE agents (
        id uuid PRIMARY KEY,
        workspace_id uuid NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
        build_number integer NOT NULL,
        resource_id uuid NOT NULL,
        name text NOT NULL,
        spec jsonb NOT NULL,
        auth_instance_id text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        lifecycle_state text NOT NULL DEFAULT 'created',
        version text NOT NULL DEFAULT '',
        expanded_directory text NOT NULL DEFAULT '',
        first_connected_at timestamptz,
        last_connected_at timestamptz,
        disconnected_at timestamptz
    );
    CREATE INDEX agents_instance ON agents (auth_instance_id);
    CREATE INDEX agents_workspace ON agents (workspace_id, build_number);
    CREATE TABLE agent_tokens (
        hash text PRIMARY KEY,
        agent_id uuid NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        kind text NOT NULL,
        created_at timestamptz NOT NULL,
        expires_at timestamptz
    );
    CREATE INDEX agent_tokens_agent ON agent_tokens (agent_id, kind, created_at);
    CREATE TABLE apps (
        id uuid PRIMARY KEY,
        agent_id uuid NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        slug text NOT NULL,
        spec jsonb NOT NULL,
        health text NOT NULL,
        UNIQUE (agent_id, slug)
    );
    CREATE TABLE agent_stats (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent_id uuid NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        workspace_id uuid NOT NULL,
        user_id uuid NOT NULL,
        created_at timestamptz NOT NULL,
        conns_by_proto jsonb NOT NULL,
        num_comms bigint NOT NULL,
        rx_packets bigint NOT NULL,
        rx_bytes bigint NOT NULL,
        tx_packets bigint NOT NULL,
        tx_bytes bigint NOT NULL
    );
    CREATE INDEX agent_stats_agent ON agent_stats (agent_id, created_at);
    CREATE INDEX agent_stats_created ON agent_stats (created_at);
    CREATE TABLE gitauth_providers (
        id text PRIMARY KEY,
        regex text NOT NULL,
        type text NOT NULL DEFAULT '',
        created_at timestamptz NOT NULL
    );
    CREATE TABLE gitauth_links (
        provider_id text NOT NULL REFERENCES gitauth_providers(id) ON DELETE CASCADE,
        user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        username text NOT NULL,
        password text NOT NULL,
        updated_at timestamptz NOT NULL,
        expires_at timestamptz,
        PRIMARY KEY (provider_id, user_id)
    );
    """,
    ),
    # 2: streamed startup logs, capped per agent (the agent's running total and overflow
    # flag live on its row, with the stream and next sequence number used to store a
    # retried batch once).
    Migration(
        sqlite="""
    CREATE TABLE agent_startup_logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        output TEXT NOT NULL,
        level TEXT NOT NULL DEFAULT 'info'
    );
    CREATE INDEX agent_startup_logs_agent ON agent_startup_logs (agent_id, id);
    ALTER TABLE agents ADD COLUMN startup_logs_length INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN startup_logs_overflowed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN startup_logs_stream TEXT NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN startup_logs_next_seq INTEGER NOT NULL DEFAULT 0;
    """,
        postgres="""
    CREATE TABLE agent_startup_logs (
        id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        agent_id uuid NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        created_at timestamptz NOT NULL,
        output text NOT NULL,
        level text NOT NULL DEFAULT 'info'
    );
    CREATE INDEX agent_startup_logs_agent ON agent_startup_logs (agent_id, id);
    ALTER TABLE agents ADD COLUMN startup_logs_length bigint NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN startup_logs_overflowed boolean NOT NULL DEFAULT false;
    ALTER TABLE agents ADD COLUMN startup_logs_stream text NOT NULL DEFAULT '';
    ALTER TABLE agents ADD COLUMN startup_logs_next_seq bigint NOT NULL DEFAULT 0;
    """,
    ),
    # 3: passwords for the web sign-in; user tokens listed per user (revoke-tokens).
    Migration(
        sqlite="""
    ALTER TABLE users ADD COLUMN password_hash TEXT NOT NULL DEFAULT '';
    CREATE INDEX user_tokens_user ON user_tokens (user_id);
    """,
        postgres="""
    ALTER TABLE users ADD COLUMN password_hash text NOT NULL DEFAULT '';
    CREATE INDEX user_tokens_user ON user_tokens (user_id);
    """,
    ),
    # 4: agent metadata, the latest result per agent and key.
    Migration(
        sqlite="""
    CREATE TABLE agent_metadata (
        agent_id TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL DEFAULT '',
        collected_at TEXT NOT NULL,
        PRIMARY KEY (agent_id, key)
    );
    """,
        postgres="""
    CREATE TABLE agent_metadata (
        agent_id uuid NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
        key text NOT NULL,
        value text NOT NULL DEFAULT '',
        error text NOT NULL DEFAULT '',
        collected_at timestamptz NOT NULL,
        PRIMARY KEY (agent_id, key)
    );
    """,
    ),
    # 5: the SSH host key each agent reports, published to its workspace's owner.
    Migration(
        sqlite="""
    CREATE TABLE agent_ssh_host_keys (
        agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        public_key TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
        postgres="""
    CREATE TABLE agent_ssh_host_keys (
        agent_id uuid PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        public_key text NOT NULL,
        updated_at timestamptz NOT NULL
    );
    """,
    ),
    # 6: which replica holds each agent's coordinate socket (several replicas on one
    # PostgreSQL database; a single SQLite process keeps this in memory).
    Migration(
        sqlite="""
    CREATE TABLE agent_sockets (
        agent_id TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        replica_id TEXT NOT NULL,
        peer_id TEXT NOT NULL,
        since TEXT NOT NULL
    );
    """,
        postgres="""
    CREATE TABLE agent_sockets (
        agent_id uuid PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
        replica_id text NOT NULL,
        peer_id text NOT NULL,
        since timestamptz NOT NULL
    );
    CREATE INDEX agent_sockets_replica ON agent_sockets (replica_id);
    """,
    ),
    # 7: a change that can end a token or a coordinate socket's right to stay (a token
    # deleted or given a new expiry, a new build) moves a counter (SQLite, read before
    # every cached token lookup) or notifies every replica (PostgreSQL), in the same
    # transaction, whichever process made it (controlplane.store.tokencache).
    Migration(
        sqlite="""
    CREATE TABLE auth_epoch (n INTEGER NOT NULL);
    INSERT INTO auth_epoch (n) VALUES (0);
    CREATE TRIGGER agent_tokens_deleted AFTER DELETE ON agent_tokens
    BEGIN UPDATE auth_epoch SET n = n + 1; END;
    CREATE TRIGGER agent_tokens_updated AFTER UPDATE ON agent_tokens
    BEGIN UPDATE auth_epoch SET n = n + 1; END;
    CREATE TRIGGER user_tokens_deleted AFTER DELETE ON user_tokens
    BEGIN UPDATE auth_epoch SET n = n + 1; END;
    CREATE TRIGGER user_tokens_updated AFTER UPDATE ON user_tokens
    BEGIN UPDATE auth_epoch SET n = n + 1; END;
    CREATE TRIGGER workspaces_rebuilt AFTER UPDATE OF latest_build ON workspaces
    BEGIN UPDATE auth_epoch SET n = n + 1; END;
    """,
        postgres="""
    CREATE FUNCTION wsagent_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('wsagent_auth', '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER agent_tokens_changed AFTER UPDATE OR DELETE ON agent_tokens
        FOR EACH STATEMENT EXECUTE FUNCTION wsagent_auth_changed();
    CREATE TRIGGER user_tokens_changed AFTER UPDATE OR DELETE ON user_tokens
        FOR EACH STATEMENT EXECUTE FUNCTION wsagent_auth_changed();
    CREATE TRIGGER workspaces_rebuilt AFTER UPDATE OF latest_build ON workspaces
        FOR EACH STATEMENT EXECUTE FUNCTION wsagent_auth_changed();
    """,
    ),
)


class MigrationError(Exception):
    pass


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it. Refuses newer databases."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise MigrationError(
            f"database schema version {current} is newer than this wsagent ({len(MIGRATIONS)})"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[version - 1].sqlite):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """A script's statements, a trigger's ``BEGIN ...; END;`` body kept whole."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements
