"""SQLite (WAL) implementation of :class:`controlplane.store.base.Store`.

Split by concern: the connection and helpers (``sqlite_base``), agent reports and stats
(``sqlite_reports``), git SSH keys and git auth (``sqlite_git``), passwords and session
revocation (``sqlite_sessions``); users, workspaces, builds, agents and tokens are here.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from agent.sdk.agentmetadata import MetadataDescription
from controlplane.sshkeys import generate_ed25519
from controlplane.store.base import Conflict, NotFound
from controlplane.store.records import (
    AgentRecord,
    AgentSpec,
    CreatedAgent,
    UserRecord,
    WorkspaceRecord,
)
from controlplane.store.sqlite_base import DB_NAME, SQLiteBase, _dt, _now, _req_dt, _ts
from controlplane.store.sqlite_git import GitStore
from controlplane.store.sqlite_logs import LogStore
from controlplane.store.sqlite_reports import ReportStore, _app_from_json, _app_to_json
from controlplane.store.sqlite_sessions import SessionStore
from controlplane.tokens import hash_token, new_token

__all__ = ["DB_NAME", "SQLiteBase", "SQLiteStore"]

MAX_IDENTITY_TOKENS_PER_AGENT: Final = 8


class SQLiteStore(ReportStore, GitStore, LogStore, SessionStore):
    @classmethod
    async def open(cls, data_dir: Path, *, durability: str = "normal") -> SQLiteStore:
        store = cls(data_dir / DB_NAME, durability=durability)
        await store._run(store._open)
        return store

    # ------------------------------------------------------------ users

    def _user(self, row: sqlite3.Row | None) -> UserRecord | None:
        if row is None:
            return None
        return UserRecord(row["id"], row["name"], row["email"], _req_dt(row["created_at"]))

    async def create_user(self, name: str, email: str = "") -> UserRecord:
        public, private = generate_ed25519(f"wsagent:{name}")

        def op(conn: sqlite3.Connection) -> UserRecord:
            user = UserRecord(str(uuid.uuid4()), name, email, _now())
            try:
                conn.execute(
                    "INSERT INTO users (id, name, email, created_at) VALUES (?, ?, ?, ?)",
                    (user.id, name, email, _ts(user.created_at)),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"user {name!r} already exists") from None
            conn.execute(
                "INSERT INTO git_ssh_keys (user_id, public_key, private_key, created_at)"
                " VALUES (?, ?, ?, ?)",
                (user.id, public, private, _ts(user.created_at)),
            )
            return user

        return await self._run(self._tx, op)

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self._read(
            lambda: self._user(
                self.conn.execute("SELECT * FROM users WHERE id=?", (user_id,)).fetchone()
            )
        )

    async def get_user_by_name(self, name: str) -> UserRecord | None:
        return await self._read(
            lambda: self._user(
                self.conn.execute("SELECT * FROM users WHERE name=?", (name,)).fetchone()
            )
        )

    async def list_users(self) -> list[UserRecord]:
        def op() -> list[UserRecord]:
            rows = self.conn.execute("SELECT * FROM users ORDER BY created_at").fetchall()
            return [u for u in (self._user(r) for r in rows) if u is not None]

        return await self._read(op)

    async def create_user_token(self, user_id: str, ttl_seconds: float | None = None) -> str:
        token = new_token()

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM users WHERE id=?", (user_id,)).fetchone() is None:
                raise NotFound(f"user {user_id} not found")
            now = _now()
            expires = now + timedelta(seconds=ttl_seconds) if ttl_seconds else None
            conn.execute(
                "INSERT INTO user_tokens (hash, user_id, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (hash_token(token), user_id, _ts(now), _ts(expires)),
            )

        await self._run(self._tx, op)
        return token

    def _live_token_row(self, sql: str, token_hash: str) -> sqlite3.Row | None:
        """The row a token's hash selects, unless the token has expired."""
        row: sqlite3.Row | None = self.conn.execute(sql, (token_hash,)).fetchone()
        if row is None:
            return None
        expires = _dt(row["token_expires"])
        if expires is not None and expires <= _now():
            return None
        return row

    def _auth_generation(self) -> int:
        """Clear the token cache if a token or build changed since the last lookup (any
        process: the counter moves in the changing transaction); the generation to fill
        with. Read before the lookup, so a change committed after it moves it again."""
        self.auth_cache.observe(self.conn.execute("SELECT n FROM auth_epoch").fetchone()[0])
        return self.auth_cache.generation

    async def auth_version(self) -> int | None:
        return await self._read(self._auth_generation)

    async def user_by_token(self, token: str) -> UserRecord | None:
        token_hash = hash_token(token)

        def op() -> UserRecord | None:
            generation = self._auth_generation()
            cached = self.auth_cache.users.get(token_hash)
            if cached is not None:
                return cached
            row = self._live_token_row(
                "SELECT u.*, t.expires_at AS token_expires FROM user_tokens t"
                " JOIN users u ON u.id = t.user_id WHERE t.hash=?",
                token_hash,
            )
            user = None if row is None else self._user(row)
            if user is not None and row is not None:
                self.auth_cache.users.put(token_hash, user, _dt(row["token_expires"]), generation)
            return user

        return await self._read(op)

    # ------------------------------------------------------------ workspaces

    def _workspace(self, row: sqlite3.Row | None) -> WorkspaceRecord | None:
        if row is None:
            return None
        return WorkspaceRecord(
            id=row["id"],
            owner_id=row["owner_id"],
            name=row["name"],
            created_at=_req_dt(row["created_at"]),
            latest_build=row["latest_build"],
            last_used_at=_dt(row["last_used_at"]),
        )

    async def create_workspace(self, owner_id: str, name: str) -> WorkspaceRecord:
        def op(conn: sqlite3.Connection) -> WorkspaceRecord:
            ws = WorkspaceRecord(str(uuid.uuid4()), owner_id, name, _now(), 0)
            try:
                conn.execute(
                    "INSERT INTO workspaces (id, owner_id, name, created_at, latest_build)"
                    " VALUES (?, ?, ?, ?, 0)",
                    (ws.id, owner_id, name, _ts(ws.created_at)),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"workspace {name!r} already exists for this owner") from None
            return ws

        return await self._run(self._tx, op)

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        return await self._read(
            lambda: self._workspace(
                self.conn.execute("SELECT * FROM workspaces WHERE id=?", (workspace_id,)).fetchone()
            )
        )

    async def get_workspace_by_name(self, owner_id: str, name: str) -> WorkspaceRecord | None:
        return await self._read(
            lambda: self._workspace(
                self.conn.execute(
                    "SELECT * FROM workspaces WHERE owner_id=? AND name=?", (owner_id, name)
                ).fetchone()
            )
        )

    async def list_workspaces(self, owner_id: str | None = None) -> list[WorkspaceRecord]:
        def op() -> list[WorkspaceRecord]:
            if owner_id is None:
                rows = self.conn.execute("SELECT * FROM workspaces ORDER BY created_at").fetchall()
            else:
                rows = self.conn.execute(
                    "SELECT * FROM workspaces WHERE owner_id=? ORDER BY created_at", (owner_id,)
                ).fetchall()
            return [w for w in (self._workspace(r) for r in rows) if w is not None]

        return await self._read(op)

    async def create_build(self, workspace_id: str, agents: list[AgentSpec]) -> list[CreatedAgent]:
        """A new build of the workspace: new agents (and tokens); older builds go stale."""

        def op(conn: sqlite3.Connection) -> list[CreatedAgent]:
            row = conn.execute(
                "SELECT latest_build FROM workspaces WHERE id=?", (workspace_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"workspace {workspace_id} not found")
            build = row["latest_build"] + 1
            conn.execute("UPDATE workspaces SET latest_build=? WHERE id=?", (build, workspace_id))
            now = _now()
            resource_id = str(uuid.uuid4())
            created = []
            for spec in agents:
                agent_id = str(uuid.uuid4())
                conn.execute(
                    "INSERT INTO agents (id, workspace_id, build_number, resource_id, name, spec,"
                    " auth_instance_id, created_at, updated_at, lifecycle_state)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'created')",
                    (
                        agent_id,
                        workspace_id,
                        build,
                        resource_id,
                        spec.name,
                        json.dumps(_spec_to_json(spec)),
                        spec.instance_id or None,
                        _ts(now),
                        _ts(now),
                    ),
                )
                for app in spec.apps:
                    health = "initializing" if app.healthcheck_url else "disabled"
                    conn.execute(
                        "INSERT INTO apps (id, agent_id, slug, spec, health)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (
                            str(uuid.uuid4()),
                            agent_id,
                            app.slug,
                            json.dumps(_app_to_json(app)),
                            health,
                        ),
                    )
                token = ""
                if spec.auth == "token":
                    token = new_token()
                    conn.execute(
                        "INSERT INTO agent_tokens (hash, agent_id, kind, created_at, expires_at)"
                        " VALUES (?, ?, 'static', ?, NULL)",
                        (hash_token(token), agent_id, _ts(now)),
                    )
                record = self._agent(
                    conn.execute("SELECT * FROM agents WHERE id=?", (agent_id,)).fetchone()
                )
                assert record is not None
                created.append(CreatedAgent(record, token))
            return created

        return await self._run(self._tx, op)

    # ------------------------------------------------------------ agents

    def _agent(self, row: sqlite3.Row | None) -> AgentRecord | None:
        if row is None:
            return None
        return AgentRecord(
            id=row["id"],
            workspace_id=row["workspace_id"],
            build_number=row["build_number"],
            resource_id=row["resource_id"],
            created_at=_req_dt(row["created_at"]),
            updated_at=_req_dt(row["updated_at"]),
            spec=_spec_from_json(json.loads(row["spec"])),
            lifecycle_state=row["lifecycle_state"],
            version=row["version"] or "",
            expanded_directory=row["expanded_directory"] or "",
            first_connected_at=_dt(row["first_connected_at"]),
            last_connected_at=_dt(row["last_connected_at"]),
            disconnected_at=_dt(row["disconnected_at"]),
            startup_logs_length=row["startup_logs_length"],
            startup_logs_overflowed=bool(row["startup_logs_overflowed"]),
        )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return await self._read(
            lambda: self._agent(
                self.conn.execute("SELECT * FROM agents WHERE id=?", (agent_id,)).fetchone()
            )
        )

    async def list_agents(
        self, workspace_id: str, *, latest_only: bool = True
    ) -> list[AgentRecord]:
        def op() -> list[AgentRecord]:
            sql = (
                "SELECT a.* FROM agents a JOIN workspaces w ON w.id = a.workspace_id"
                " WHERE a.workspace_id=?"
            )
            if latest_only:
                sql += " AND a.build_number = w.latest_build"
            rows = self.conn.execute(
                sql + " ORDER BY a.build_number, a.name", (workspace_id,)
            ).fetchall()
            return [a for a in (self._agent(r) for r in rows) if a is not None]

        return await self._read(op)

    async def agent_by_token(self, token: str) -> AgentRecord | None:
        token_hash = hash_token(token)

        def op() -> AgentRecord | None:
            generation = self._auth_generation()
            cached = self.auth_cache.agents.get(token_hash)
            if cached is not None:
                return cached
            row = self._live_token_row(
                "SELECT a.*, t.expires_at AS token_expires FROM agent_tokens t"
                " JOIN agents a ON a.id = t.agent_id WHERE t.hash=?",
                token_hash,
            )
            agent = None if row is None else self._agent(row)
            if agent is not None and row is not None:
                self.auth_cache.agents.put(token_hash, agent, _dt(row["token_expires"]), generation)
            return agent

        return await self._read(op)

    async def agent_by_instance_id(self, instance_id: str) -> AgentRecord | None:
        def op() -> AgentRecord | None:
            row = self.conn.execute(
                "SELECT a.* FROM agents a JOIN workspaces w ON w.id = a.workspace_id"
                " WHERE a.auth_instance_id=? AND a.build_number = w.latest_build"
                " ORDER BY a.created_at DESC LIMIT 1",
                (instance_id,),
            ).fetchone()
            return self._agent(row)

        return await self._read(op)

    async def issue_agent_token(
        self, agent_id: str, *, kind: str, ttl_seconds: float | None
    ) -> str:
        token = new_token()

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM agents WHERE id=?", (agent_id,)).fetchone() is None:
                raise NotFound(f"agent {agent_id} not found")
            now = _now()
            expires = now + timedelta(seconds=ttl_seconds) if ttl_seconds else None
            conn.execute(
                "INSERT INTO agent_tokens (hash, agent_id, kind, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (hash_token(token), agent_id, kind, _ts(now), _ts(expires)),
            )
            # Every reconnect exchanges the identity again: keep only the newest few.
            conn.execute(
                "DELETE FROM agent_tokens WHERE agent_id=? AND kind=? AND hash NOT IN"
                " (SELECT hash FROM agent_tokens WHERE agent_id=? AND kind=?"
                "  ORDER BY created_at DESC LIMIT ?)",
                (agent_id, kind, agent_id, kind, MAX_IDENTITY_TOKENS_PER_AGENT),
            )

        await self._run(self._tx, op)
        return token

    async def extend_agent_tokens(self, agent_id: str, until: datetime) -> int:
        stamp = _ts(until)

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE agent_tokens SET expires_at=? WHERE agent_id=?"
                " AND expires_at IS NOT NULL AND expires_at < ?",
                (stamp, agent_id, stamp),
            ).rowcount

        return await self._run(self._tx, op)

    async def revoke_agent_tokens(self, agent_id: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM agent_tokens WHERE agent_id=?", (agent_id,)).rowcount

        return await self._run(self._tx, op)

    async def rotate_agent_token(self, agent_id: str) -> str:
        """Revoke every token of the agent and issue a new static one."""
        await self.revoke_agent_tokens(agent_id)
        return await self.issue_agent_token(agent_id, kind="static", ttl_seconds=None)


def _spec_to_json(spec: AgentSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "auth": spec.auth,
        "instance_id": spec.instance_id,
        "startup_script": spec.startup_script,
        "startup_script_timeout_seconds": spec.startup_script_timeout_seconds,
        "shutdown_script": spec.shutdown_script,
        "shutdown_script_timeout_seconds": spec.shutdown_script_timeout_seconds,
        "metadata": [m.to_json() for m in spec.metadata],
        "directory": spec.directory,
        "environment_variables": spec.environment_variables,
        "motd_file": spec.motd_file,
        "apps": [_app_to_json(a) for a in spec.apps],
        "connection_timeout_seconds": spec.connection_timeout_seconds,
        "troubleshooting_url": spec.troubleshooting_url,
        "login_before_ready": spec.login_before_ready,
        "architecture": spec.architecture,
        "operating_system": spec.operating_system,
    }


def _spec_from_json(value: dict[str, Any]) -> AgentSpec:
    apps = tuple(_app_from_json(a) for a in value.pop("apps", []))
    metadata = tuple(
        MetadataDescription(
            key=m["key"],
            script=m["script"],
            interval=m["interval"],
            timeout=m["timeout"],
            display_name=m["display_name"],
        )
        for m in value.pop("metadata", [])
    )
    return AgentSpec(apps=apps, metadata=metadata, **value)
