"""PostgreSQL implementation of :class:`controlplane.store.base.Store` (asyncpg).

For several control-plane replicas sharing one database (docs/scaling.md). Split like the
SQLite store: pool, schema and jobs (``pg_base``), agent reports and stats
(``pg_reports``), git keys and git auth (``pg_git``), startup logs (``pg_logs``),
passwords and session revocation (``pg_sessions``); users, workspaces, builds, agents
and tokens are here. Same semantics as the SQLite store, method for method: the store
tests run against both.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from controlplane.sshkeys import generate_ed25519
from controlplane.store.base import Conflict, NotFound
from controlplane.store.pg_base import (
    REVOKED_CHANNEL,
    create_pool,
    migrate,
    now,
    parse_uuid,
    sid,
    utc,
)
from controlplane.store.pg_git import PGGitStore
from controlplane.store.pg_logs import PGLogStore
from controlplane.store.pg_reports import PGReportStore
from controlplane.store.pg_sessions import PGSessionStore
from controlplane.store.records import (
    AgentRecord,
    AgentSpec,
    CreatedAgent,
    UserRecord,
    WorkspaceRecord,
)
from controlplane.store.sqlite import _spec_from_json, _spec_to_json
from controlplane.store.sqlite_reports import _app_to_json
from controlplane.tokens import hash_token, new_token

__all__ = ["PostgresStore"]

MAX_IDENTITY_TOKENS_PER_AGENT: Final = 8
DEFAULT_POOL_SIZE: Final = 10


class PostgresStore(PGReportStore, PGGitStore, PGLogStore, PGSessionStore):
    @classmethod
    async def open(
        cls, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, jobs: bool = True
    ) -> PostgresStore:
        pool = await create_pool(url, size=pool_size)
        store = cls(pool, url)
        try:
            async with store._conn() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        if jobs:
            store.start_jobs()
        return store

    # ------------------------------------------------------------ users

    @staticmethod
    def _user(row: asyncpg.Record | None) -> UserRecord | None:
        if row is None:
            return None
        return UserRecord(sid(row["id"]), row["name"], row["email"], row["created_at"])

    async def create_user(self, name: str, email: str = "") -> UserRecord:
        public, private = generate_ed25519(f"wsagent:{name}")
        user = UserRecord(str(uuid.uuid4()), name, email, now())
        try:
            async with self._tx() as conn:
                await conn.execute(
                    "INSERT INTO users (id, name, email, created_at) VALUES ($1, $2, $3, $4)",
                    user.id,
                    name,
                    email,
                    user.created_at,
                )
                await conn.execute(
                    "INSERT INTO git_ssh_keys (user_id, public_key, private_key, created_at)"
                    " VALUES ($1, $2, $3, $4)",
                    user.id,
                    public,
                    private,
                    user.created_at,
                )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"user {name!r} already exists") from None
        return user

    async def get_user(self, user_id: str) -> UserRecord | None:
        key = parse_uuid(user_id)
        if key is None:
            return None
        return self._user(await self._fetchrow("SELECT * FROM users WHERE id=$1", key))

    async def get_user_by_name(self, name: str) -> UserRecord | None:
        return self._user(await self._fetchrow("SELECT * FROM users WHERE name=$1", name))

    async def list_users(self) -> list[UserRecord]:
        rows = await self._fetch("SELECT * FROM users ORDER BY created_at")
        return [u for u in (self._user(r) for r in rows) if u is not None]

    async def create_user_token(self, user_id: str, ttl_seconds: float | None = None) -> str:
        key = parse_uuid(user_id)
        token = new_token()
        async with self._tx() as conn:
            if key is None or await conn.fetchval("SELECT 1 FROM users WHERE id=$1", key) is None:
                raise NotFound(f"user {user_id} not found")
            created = now()
            expires = created + timedelta(seconds=ttl_seconds) if ttl_seconds else None
            await conn.execute(
                "INSERT INTO user_tokens (hash, user_id, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4)",
                hash_token(token),
                key,
                created,
                expires,
            )
        return token

    async def user_by_token(self, token: str) -> UserRecord | None:
        token_hash = hash_token(token)
        cached = self.auth_cache.users.get(token_hash)
        if cached is not None:
            return cached
        generation = self.auth_cache.generation
        row = await self._fetchrow(
            "SELECT u.*, t.expires_at AS token_expires FROM user_tokens t"
            " JOIN users u ON u.id = t.user_id"
            " WHERE t.hash=$1 AND (t.expires_at IS NULL OR t.expires_at > $2)",
            token_hash,
            now(),
        )
        user = self._user(row)
        if user is not None and row is not None:
            self.auth_cache.users.put(token_hash, user, row["token_expires"], generation)
        return user

    # ------------------------------------------------------------ workspaces

    @staticmethod
    def _workspace(row: asyncpg.Record | None) -> WorkspaceRecord | None:
        if row is None:
            return None
        return WorkspaceRecord(
            id=sid(row["id"]),
            owner_id=sid(row["owner_id"]),
            name=row["name"],
            created_at=row["created_at"],
            latest_build=row["latest_build"],
            last_used_at=utc(row["last_used_at"]),
        )

    async def create_workspace(self, owner_id: str, name: str) -> WorkspaceRecord:
        ws = WorkspaceRecord(str(uuid.uuid4()), owner_id, name, now(), 0)
        key = parse_uuid(owner_id)
        if key is None:
            raise NotFound(f"user {owner_id} not found")
        try:
            await self._execute(
                "INSERT INTO workspaces (id, owner_id, name, created_at, latest_build)"
                " VALUES ($1, $2, $3, $4, 0)",
                ws.id,
                key,
                name,
                ws.created_at,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"workspace {name!r} already exists for this owner") from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(f"user {owner_id} not found") from None
        return ws

    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None:
        key = parse_uuid(workspace_id)
        if key is None:
            return None
        return self._workspace(await self._fetchrow("SELECT * FROM workspaces WHERE id=$1", key))

    async def get_workspace_by_name(self, owner_id: str, name: str) -> WorkspaceRecord | None:
        key = parse_uuid(owner_id)
        if key is None:
            return None
        return self._workspace(
            await self._fetchrow(
                "SELECT * FROM workspaces WHERE owner_id=$1 AND name=$2", key, name
            )
        )

    async def list_workspaces(self, owner_id: str | None = None) -> list[WorkspaceRecord]:
        if owner_id is None:
            rows = await self._fetch("SELECT * FROM workspaces ORDER BY created_at")
        else:
            key = parse_uuid(owner_id)
            if key is None:
                return []
            rows = await self._fetch(
                "SELECT * FROM workspaces WHERE owner_id=$1 ORDER BY created_at", key
            )
        return [w for w in (self._workspace(r) for r in rows) if w is not None]

    async def create_build(self, workspace_id: str, agents: list[AgentSpec]) -> list[CreatedAgent]:
        """A new build of the workspace: new agents (and tokens); older builds go stale."""
        key = parse_uuid(workspace_id)
        if key is None:
            raise NotFound(f"workspace {workspace_id} not found")
        async with self._tx() as conn:
            build = await conn.fetchval(
                "UPDATE workspaces SET latest_build = latest_build + 1 WHERE id=$1"
                " RETURNING latest_build",
                key,
            )
            if build is None:
                raise NotFound(f"workspace {workspace_id} not found")
            created_at = now()
            resource_id = uuid.uuid4()
            created = []
            for spec in agents:
                agent_id = uuid.uuid4()
                row = await conn.fetchrow(
                    "INSERT INTO agents (id, workspace_id, build_number, resource_id, name, spec,"
                    " auth_instance_id, created_at, updated_at, lifecycle_state)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, 'created') RETURNING *",
                    agent_id,
                    key,
                    build,
                    resource_id,
                    spec.name,
                    _spec_to_json(spec),
                    spec.instance_id or None,
                    created_at,
                )
                for app in spec.apps:
                    health = "initializing" if app.healthcheck_url else "disabled"
                    await conn.execute(
                        "INSERT INTO apps (id, agent_id, slug, spec, health)"
                        " VALUES ($1, $2, $3, $4, $5)",
                        uuid.uuid4(),
                        agent_id,
                        app.slug,
                        _app_to_json(app),
                        health,
                    )
                token = ""
                if spec.auth == "token":
                    token = new_token()
                    await conn.execute(
                        "INSERT INTO agent_tokens (hash, agent_id, kind, created_at, expires_at)"
                        " VALUES ($1, $2, 'static', $3, NULL)",
                        hash_token(token),
                        agent_id,
                        created_at,
                    )
                record = self._agent(row)
                assert record is not None
                created.append(CreatedAgent(record, token))
        self.auth_cache.invalidate()  # older builds' sockets must notice (auth_version)
        return created

    # ------------------------------------------------------------ agents

    @staticmethod
    def _agent(row: asyncpg.Record | None) -> AgentRecord | None:
        if row is None:
            return None
        spec: dict[str, Any] = dict(row["spec"])
        return AgentRecord(
            id=sid(row["id"]),
            workspace_id=sid(row["workspace_id"]),
            build_number=row["build_number"],
            resource_id=sid(row["resource_id"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            spec=_spec_from_json(spec),
            lifecycle_state=row["lifecycle_state"],
            version=row["version"] or "",
            expanded_directory=row["expanded_directory"] or "",
            first_connected_at=utc(row["first_connected_at"]),
            last_connected_at=utc(row["last_connected_at"]),
            disconnected_at=utc(row["disconnected_at"]),
            startup_logs_length=row["startup_logs_length"],
            startup_logs_overflowed=row["startup_logs_overflowed"],
        )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        key = parse_uuid(agent_id)
        if key is None:
            return None
        return self._agent(await self._fetchrow("SELECT * FROM agents WHERE id=$1", key))

    async def list_agents(
        self, workspace_id: str, *, latest_only: bool = True
    ) -> list[AgentRecord]:
        key = parse_uuid(workspace_id)
        if key is None:
            return []
        sql = (
            "SELECT a.* FROM agents a JOIN workspaces w ON w.id = a.workspace_id"
            " WHERE a.workspace_id=$1"
        )
        if latest_only:
            sql += " AND a.build_number = w.latest_build"
        rows = await self._fetch(sql + " ORDER BY a.build_number, a.name", key)
        return [a for a in (self._agent(r) for r in rows) if a is not None]

    async def agent_by_token(self, token: str) -> AgentRecord | None:
        token_hash = hash_token(token)
        cached = self.auth_cache.agents.get(token_hash)
        if cached is not None:
            return cached
        generation = self.auth_cache.generation
        row = await self._fetchrow(
            "SELECT a.*, t.expires_at AS token_expires FROM agent_tokens t"
            " JOIN agents a ON a.id = t.agent_id"
            " WHERE t.hash=$1 AND (t.expires_at IS NULL OR t.expires_at > $2)",
            token_hash,
            now(),
        )
        agent = self._agent(row)
        if agent is not None and row is not None:
            self.auth_cache.agents.put(token_hash, agent, row["token_expires"], generation)
        return agent

    async def agent_by_instance_id(self, instance_id: str) -> AgentRecord | None:
        row = await self._fetchrow(
            "SELECT a.* FROM agents a JOIN workspaces w ON w.id = a.workspace_id"
            " WHERE a.auth_instance_id=$1 AND a.build_number = w.latest_build"
            " ORDER BY a.created_at DESC LIMIT 1",
            instance_id,
        )
        return self._agent(row)

    async def issue_agent_token(
        self, agent_id: str, *, kind: str, ttl_seconds: float | None
    ) -> str:
        key = parse_uuid(agent_id)
        token = new_token()
        async with self._tx() as conn:
            if key is None or await conn.fetchval("SELECT 1 FROM agents WHERE id=$1", key) is None:
                raise NotFound(f"agent {agent_id} not found")
            created = now()
            expires = created + timedelta(seconds=ttl_seconds) if ttl_seconds else None
            await conn.execute(
                "INSERT INTO agent_tokens (hash, agent_id, kind, created_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                hash_token(token),
                key,
                kind,
                created,
                expires,
            )
            # Every reconnect exchanges the identity again: keep only the newest few.
            await conn.execute(
                "DELETE FROM agent_tokens WHERE agent_id=$1 AND kind=$2 AND hash NOT IN"
                " (SELECT hash FROM agent_tokens WHERE agent_id=$1 AND kind=$2"
                "  ORDER BY created_at DESC LIMIT $3)",
                key,
                kind,
                MAX_IDENTITY_TOKENS_PER_AGENT,
            )
        self.auth_cache.invalidate()  # older identity tokens went (others: the NOTIFY)
        return token

    async def extend_agent_tokens(self, agent_id: str, until: datetime) -> int:
        key = parse_uuid(agent_id)
        if key is None:
            return 0
        status = await self._execute(
            "UPDATE agent_tokens SET expires_at=$1 WHERE agent_id=$2"
            " AND expires_at IS NOT NULL AND expires_at < $1",
            until,
            key,
        )
        self.auth_cache.invalidate()  # cached expiries are too early now
        return int(status.split()[-1])

    async def revoke_agent_tokens(self, agent_id: str) -> int:
        key = parse_uuid(agent_id)
        if key is None:
            return 0
        async with self._tx() as conn:
            status = await conn.execute("DELETE FROM agent_tokens WHERE agent_id=$1", key)
            # Every replica's sockets of this agent check their token now (controlplane.pgbus).
            await conn.execute("SELECT pg_notify($1, $2)", REVOKED_CHANNEL, str(key))
        # This replica at once; the others when the trigger's notification reaches them.
        self.auth_cache.invalidate()
        return int(status.split()[-1])

    async def rotate_agent_token(self, agent_id: str) -> str:
        """Revoke every token of the agent and issue a new static one."""
        await self.revoke_agent_tokens(agent_id)
        return await self.issue_agent_token(agent_id, kind="static", ttl_seconds=None)
