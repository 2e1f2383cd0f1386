"""The one narrow interface between handlers and storage.

SQLite (``controlplane.store.sqlite``, the zero-setup default) and PostgreSQL
(``controlplane.store.pg``, for several replicas) implement it; ``controlplane.store.open``
picks one from the configuration. All methods are async.
Secrets (session and agent tokens) are stored only as hashes: the methods that create a
token return the plaintext once.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Protocol

from agent.sdk.models import Stats
from controlplane.store.records import (
    AgentRecord,
    AgentSpec,
    AppendLogsResult,
    AppRecord,
    CreatedAgent,
    GitAuthLink,
    GitAuthProvider,
    GitSSHKeyRecord,
    MetadataRecord,
    NewStartupLog,
    StartupLogRecord,
    StatsRecord,
    UserRecord,
    WorkspaceRecord,
)
from controlplane.store.tokencache import AuthCache


class StoreError(Exception):
    """A store operation failed (constraint, missing row)."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The database cannot be reached right now (PostgreSQL down or restarting).

    Handlers let it through: the HTTP layer answers 503 and the client retries.
    """


class Store(Protocol):
    # Token -> record, cleared on every change that can end a token (any process, any
    # replica); see controlplane.store.tokencache.
    auth_cache: AuthCache

    async def close(self) -> None: ...

    async def auth_version(self) -> int | None:
        """Moves whenever a token is deleted or given a new expiry, or a workspace gets
        a new build (by any process or replica); None while such changes may go unheard.
        A connection refresh that reads the value it read last skips its build check."""
        ...

    # users and sessions
    async def create_user(self, name: str, email: str = "") -> UserRecord: ...
    async def get_user(self, user_id: str) -> UserRecord | None: ...
    async def get_user_by_name(self, name: str) -> UserRecord | None: ...
    async def list_users(self) -> list[UserRecord]: ...
    async def create_user_token(self, user_id: str, ttl_seconds: float | None = None) -> str: ...
    async def user_by_token(self, token: str) -> UserRecord | None: ...
    async def set_password_hash(self, user_id: str, password_hash: str) -> None: ...
    async def password_hash(self, user_id: str) -> str:
        """The user's password hash; "" when the user has none (or does not exist)."""
        ...

    async def revoke_user_token(self, token: str) -> bool: ...
    async def revoke_user_tokens(self, user_id: str) -> int: ...
    async def live_user_token_hashes(self, hashes: Collection[str]) -> set[str]:
        """Which of these token hashes still sign a user in (not revoked, not expired)."""
        ...

    async def git_ssh_key(self, user_id: str) -> GitSSHKeyRecord | None: ...
    async def regenerate_git_ssh_key(self, user_id: str) -> GitSSHKeyRecord: ...

    # workspaces, builds and agents
    async def create_workspace(self, owner_id: str, name: str) -> WorkspaceRecord: ...
    async def get_workspace(self, workspace_id: str) -> WorkspaceRecord | None: ...
    async def get_workspace_by_name(self, owner_id: str, name: str) -> WorkspaceRecord | None: ...
    async def list_workspaces(self, owner_id: str | None = None) -> list[WorkspaceRecord]: ...
    async def create_build(
        self, workspace_id: str, agents: list[AgentSpec]
    ) -> list[CreatedAgent]: ...
    async def get_agent(self, agent_id: str) -> AgentRecord | None: ...
    async def list_agents(
        self, workspace_id: str, *, latest_only: bool = True
    ) -> list[AgentRecord]: ...
    async def agent_by_token(self, token: str) -> AgentRecord | None:
        """The agent a live token signs in. May come from ``auth_cache``: its identity
        and build are exact, its connection times, lifecycle and log counters may be stale
        (read ``get_agent`` for those)."""
        ...

    async def agent_by_instance_id(self, instance_id: str) -> AgentRecord | None: ...
    async def issue_agent_token(
        self, agent_id: str, *, kind: str, ttl_seconds: float | None
    ) -> str: ...
    async def revoke_agent_tokens(self, agent_id: str) -> int: ...
    async def extend_agent_tokens(self, agent_id: str, until: datetime) -> int:
        """Make the agent's expiring tokens valid at least until ``until``; returns how
        many were extended (revoked tokens stay revoked)."""
        ...

    async def rotate_agent_token(self, agent_id: str) -> str: ...

    # agent reports
    async def set_agent_startup(
        self, agent_id: str, version: str, expanded_directory: str
    ) -> None: ...
    async def set_agent_lifecycle(self, agent_id: str, state: str) -> None: ...
    async def set_agent_ssh_host_key(self, agent_id: str, public_key: str) -> None: ...
    async def agent_ssh_host_key(self, agent_id: str) -> str:
        """The agent's reported SSH public key line, or ""."""
        ...

    async def agent_connected(self, agent_id: str, now: datetime) -> None: ...
    async def agent_heartbeats(self, agent_ids: list[str], now: datetime) -> None:
        """Mark many agents as still connected (``last_connected_at``), in one transaction."""
        ...

    async def agent_disconnected(self, agent_id: str, now: datetime) -> None: ...
    async def list_apps(self, agent_id: str) -> list[AppRecord]: ...
    async def set_app_healths(self, agent_id: str, healths: dict[str, str]) -> None: ...
    async def insert_stats(
        self,
        agent: AgentRecord,
        owner_id: str,
        stats: Stats,
        now: datetime,
        *,
        merge_within: float = 0.0,
    ) -> None:
        """Store one report; if the agent's newest row is under ``merge_within`` seconds
        old, add this report's counters into it instead (see ``merge_stats``)."""
        ...

    async def list_stats(self, agent_id: str) -> list[StatsRecord]: ...

    # agent metadata
    async def upsert_agent_metadata(self, rows: list[MetadataRecord]) -> None:
        """Store each row as the latest of its (agent, key), all in one transaction."""
        ...

    async def list_agent_metadata(self, agent_id: str) -> list[MetadataRecord]: ...

    # startup logs
    async def append_startup_logs(
        self,
        agent_id: str,
        logs: list[NewStartupLog],
        *,
        cap_bytes: int,
        stream: str = "",
        first_seq: int = 0,
    ) -> AppendLogsResult:
        """Append lines while the agent's total stays within ``cap_bytes``; the first line
        that would pass it sets the overflow flag, and nothing is stored after that. With a
        ``stream``, lines numbered below the stream's next expected number are skipped."""
        ...

    async def list_startup_logs(
        self, agent_id: str, *, after: int = 0, before: int = 0, limit: int = 50_000
    ) -> list[StartupLogRecord]: ...

    # git auth
    async def upsert_gitauth_provider(self, provider: GitAuthProvider) -> None: ...
    async def list_gitauth_providers(self) -> list[GitAuthProvider]: ...
    async def set_gitauth_link(
        self,
        provider_id: str,
        user_id: str,
        username: str,
        password: str,
        expires_at: datetime | None = None,
    ) -> None: ...
    async def get_gitauth_link(self, provider_id: str, user_id: str) -> GitAuthLink | None: ...
