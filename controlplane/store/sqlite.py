"""SQLite (WAL) implementation of :class:`controlplane.store.base.Store`.

One connection, owned by one worker thread: every call runs there in order, so writes are
serialised without locks in the handlers. WAL with ``synchronous=NORMAL`` keeps every
committed write across a process crash or ``kill -9`` (only power loss can drop the last
transactions; use ``synchronous=FULL`` via ``durability="full"`` for that).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from agent.sdk.models import Stats
from controlplane.sshkeys import generate_ed25519
from controlplane.store.base import Conflict, NotFound
from controlplane.store.migrations import migrate
from controlplane.store.records import (
    AgentRecord,
    AgentSpec,
    AppRecord,
    AppSpec,
    CreatedAgent,
    GitAuthLink,
    GitAuthProvider,
    GitSSHKeyRecord,
    StatsRecord,
    UserRecord,
    WorkspaceRecord,
)
from controlplane.tokens import hash_token, new_token

T = TypeVar("T")

DB_NAME: Final = "wsagent.db"
MAX_IDENTITY_TOKENS_PER_AGENT: Final = 8


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _req_dt(value: str) -> datetime:
    parsed = _dt(value)
    assert parsed is not None
    return parsed


class SQLiteStore:
    def __init__(self, path: Path, *, durability: str = "normal") -> None:
        self.path = path
        self._durability = durability
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, data_dir: Path, *, durability: str = "normal") -> SQLiteStore:
        store = cls(data_dir / DB_NAME, durability=durability)
        await store._run(store._open)
        return store

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
        self._conn = conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is closed"
        return self._conn

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

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(_close)
        self._executor.shutdown(wait=True)

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
        return await self._run(
            lambda: self._user(
                self.conn.execute("SELECT * FROM users WHERE id=?", (user_id,)).fetchone()
            )
        )

    async def get_user_by_name(self, name: str) -> UserRecord | None:
        return await self._run(
            lambda: self._user(
                self.conn.execute("SELECT * FROM users WHERE name=?", (name,)).fetchone()
            )
        )

    async def list_users(self) -> list[UserRecord]:
        def op() -> list[UserRecord]:
            rows = self.conn.execute("SELECT * FROM users ORDER BY created_at").fetchall()
            return [u for u in (self._user(r) for r in rows) if u is not None]

        return await self._run(op)

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

    async def user_by_token(self, token: str) -> UserRecord | None:
        def op() -> UserRecord | None:
            row = self.conn.execute(
                "SELECT u.*, t.expires_at AS token_expires FROM user_tokens t"
                " JOIN users u ON u.id = t.user_id WHERE t.hash=?",
                (hash_token(token),),
            ).fetchone()
            if row is None:
                return None
            expires = _dt(row["token_expires"])
            if expires is not None and expires <= _now():
                return None
            return self._user(row)

        return await self._run(op)

    async def git_ssh_key(self, user_id: str) -> GitSSHKeyRecord | None:
        def op() -> GitSSHKeyRecord | None:
            row = self.conn.execute(
                "SELECT * FROM git_ssh_keys WHERE user_id=?", (user_id,)
            ).fetchone()
            if row is None:
                return None
            return GitSSHKeyRecord(row["user_id"], row["public_key"], row["private_key"])

        return await self._run(op)

    async def regenerate_git_ssh_key(self, user_id: str) -> GitSSHKeyRecord:
        user = await self.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        public, private = generate_ed25519(f"wsagent:{user.name}")

        def op(conn: sqlite3.Connection) -> GitSSHKeyRecord:
            conn.execute(
                "INSERT INTO git_ssh_keys (user_id, public_key, private_key, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET"
                " public_key=excluded.public_key, private_key=excluded.private_key,"
                " created_at=excluded.created_at",
                (user_id, public, private, _ts(_now())),
            )
            return GitSSHKeyRecord(user_id, public, private)

        return await self._run(self._tx, op)

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
        return await self._run(
            lambda: self._workspace(
                self.conn.execute("SELECT * FROM workspaces WHERE id=?", (workspace_id,)).fetchone()
            )
        )

    async def get_workspace_by_name(self, owner_id: str, name: str) -> WorkspaceRecord | None:
        return await self._run(
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

        return await self._run(op)

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
        )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return await self._run(
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

        return await self._run(op)

    async def agent_by_token(self, token: str) -> AgentRecord | None:
        def op() -> AgentRecord | None:
            row = self.conn.execute(
                "SELECT a.*, t.expires_at AS token_expires FROM agent_tokens t"
                " JOIN agents a ON a.id = t.agent_id WHERE t.hash=?",
                (hash_token(token),),
            ).fetchone()
            if row is None:
                return None
            expires = _dt(row["token_expires"])
            if expires is not None and expires <= _now():
                return None
            return self._agent(row)

        return await self._run(op)

    async def agent_by_instance_id(self, instance_id: str) -> AgentRecord | None:
        def op() -> AgentRecord | None:
            row = self.conn.execute(
                "SELECT a.* FROM agents a JOIN workspaces w ON w.id = a.workspace_id"
                " WHERE a.auth_instance_id=? AND a.build_number = w.latest_build"
                " ORDER BY a.created_at DESC LIMIT 1",
                (instance_id,),
            ).fetchone()
            return self._agent(row)

        return await self._run(op)

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

    async def revoke_agent_tokens(self, agent_id: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM agent_tokens WHERE agent_id=?", (agent_id,)).rowcount

        return await self._run(self._tx, op)

    async def rotate_agent_token(self, agent_id: str) -> str:
        """Revoke every token of the agent and issue a new static one."""
        await self.revoke_agent_tokens(agent_id)
        return await self.issue_agent_token(agent_id, kind="static", ttl_seconds=None)

    # ------------------------------------------------------------ agent reports

    async def _update_agent(self, agent_id: str, sql: str, *params: Any) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE agents SET {sql}, updated_at=? WHERE id=?",
                (*params, _ts(_now()), agent_id),
            )

        await self._run(self._tx, op)

    async def set_agent_startup(self, agent_id: str, version: str, expanded_directory: str) -> None:
        await self._update_agent(
            agent_id, "version=?, expanded_directory=?", version, expanded_directory
        )

    async def set_agent_lifecycle(self, agent_id: str, state: str) -> None:
        await self._update_agent(agent_id, "lifecycle_state=?", state)

    async def agent_connected(self, agent_id: str, now: datetime) -> None:
        await self._update_agent(
            agent_id,
            "first_connected_at=COALESCE(first_connected_at, ?), last_connected_at=?",
            _ts(now),
            _ts(now),
        )

    async def agent_heartbeat(self, agent_id: str, now: datetime) -> None:
        await self._update_agent(agent_id, "last_connected_at=?", _ts(now))

    async def agent_disconnected(self, agent_id: str, now: datetime) -> None:
        await self._update_agent(agent_id, "disconnected_at=?", _ts(now))

    async def list_apps(self, agent_id: str) -> list[AppRecord]:
        def op() -> list[AppRecord]:
            rows = self.conn.execute(
                "SELECT * FROM apps WHERE agent_id=? ORDER BY slug", (agent_id,)
            ).fetchall()
            return [
                AppRecord(
                    r["id"], r["agent_id"], _app_from_json(json.loads(r["spec"])), r["health"]
                )
                for r in rows
            ]

        return await self._run(op)

    async def set_app_healths(self, agent_id: str, healths: dict[str, str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for app_id, health in healths.items():
                conn.execute(
                    "UPDATE apps SET health=? WHERE id=? AND agent_id=?", (health, app_id, agent_id)
                )

        await self._run(self._tx, op)

    async def insert_stats(
        self, agent: AgentRecord, owner_id: str, stats: Stats, now: datetime
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO agent_stats (agent_id, workspace_id, user_id, created_at,"
                " conns_by_proto,"
                " num_comms, rx_packets, rx_bytes, tx_packets, tx_bytes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agent.id,
                    agent.workspace_id,
                    owner_id,
                    _ts(now),
                    json.dumps(stats.conns_by_proto),
                    stats.num_comms,
                    stats.rx_packets,
                    stats.rx_bytes,
                    stats.tx_packets,
                    stats.tx_bytes,
                ),
            )
            conn.execute(
                "UPDATE workspaces SET last_used_at=? WHERE id=?", (_ts(now), agent.workspace_id)
            )
            # Like Coder's purge: stats older than 30 days are dropped.
            conn.execute(
                "DELETE FROM agent_stats WHERE agent_id=? AND created_at < ?",
                (agent.id, _ts(now - timedelta(days=30))),
            )

        await self._run(self._tx, op)

    async def list_stats(self, agent_id: str) -> list[StatsRecord]:
        def op() -> list[StatsRecord]:
            rows = self.conn.execute(
                "SELECT * FROM agent_stats WHERE agent_id=? ORDER BY id", (agent_id,)
            ).fetchall()
            return [
                StatsRecord(
                    id=r["id"],
                    agent_id=r["agent_id"],
                    workspace_id=r["workspace_id"],
                    user_id=r["user_id"],
                    created_at=_req_dt(r["created_at"]),
                    conns_by_proto=json.loads(r["conns_by_proto"]),
                    num_comms=r["num_comms"],
                    rx_packets=r["rx_packets"],
                    rx_bytes=r["rx_bytes"],
                    tx_packets=r["tx_packets"],
                    tx_bytes=r["tx_bytes"],
                )
                for r in rows
            ]

        return await self._run(op)

    # ------------------------------------------------------------ git auth

    async def upsert_gitauth_provider(self, provider: GitAuthProvider) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO gitauth_providers (id, regex, type, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET regex=excluded.regex, type=excluded.type",
                (provider.id, provider.regex, provider.type, _ts(_now())),
            )

        await self._run(self._tx, op)

    async def list_gitauth_providers(self) -> list[GitAuthProvider]:
        def op() -> list[GitAuthProvider]:
            rows = self.conn.execute(
                "SELECT * FROM gitauth_providers ORDER BY created_at, id"
            ).fetchall()
            return [GitAuthProvider(r["id"], r["regex"], r["type"]) for r in rows]

        return await self._run(op)

    async def set_gitauth_link(
        self,
        provider_id: str,
        user_id: str,
        username: str,
        password: str,
        expires_at: datetime | None = None,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if (
                conn.execute(
                    "SELECT 1 FROM gitauth_providers WHERE id=?", (provider_id,)
                ).fetchone()
                is None
            ):
                raise NotFound(f"git auth provider {provider_id!r} not found")
            conn.execute(
                "INSERT INTO gitauth_links"
                " (provider_id, user_id, username, password, updated_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(provider_id, user_id) DO UPDATE SET"
                " username=excluded.username, password=excluded.password,"
                " updated_at=excluded.updated_at, expires_at=excluded.expires_at",
                (provider_id, user_id, username, password, _ts(_now()), _ts(expires_at)),
            )

        await self._run(self._tx, op)

    async def get_gitauth_link(self, provider_id: str, user_id: str) -> GitAuthLink | None:
        def op() -> GitAuthLink | None:
            r = self.conn.execute(
                "SELECT * FROM gitauth_links WHERE provider_id=? AND user_id=?",
                (provider_id, user_id),
            ).fetchone()
            if r is None:
                return None
            return GitAuthLink(
                r["provider_id"],
                r["user_id"],
                r["username"],
                r["password"],
                _req_dt(r["updated_at"]),
                _dt(r["expires_at"]),
            )

        return await self._run(op)


def _app_to_json(app: AppSpec) -> dict[str, Any]:
    return {
        "slug": app.slug,
        "display_name": app.display_name,
        "url": app.url,
        "command": app.command,
        "icon": app.icon,
        "external": app.external,
        "subdomain": app.subdomain,
        "sharing_level": app.sharing_level,
        "healthcheck_url": app.healthcheck_url,
        "healthcheck_interval": app.healthcheck_interval,
        "healthcheck_threshold": app.healthcheck_threshold,
    }


def _app_from_json(value: dict[str, Any]) -> AppSpec:
    return AppSpec(**value)


def _spec_to_json(spec: AgentSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "auth": spec.auth,
        "instance_id": spec.instance_id,
        "startup_script": spec.startup_script,
        "startup_script_timeout_seconds": spec.startup_script_timeout_seconds,
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
    return AgentSpec(apps=apps, **value)
