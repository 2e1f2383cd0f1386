"""The PostgreSQL store's sign-in part: password hashes, revoking user session tokens, and
the SSH host keys agents report."""

from __future__ import annotations

from collections.abc import Collection

from controlplane.store.base import NotFound
from controlplane.store.pg_base import PGBase, now, parse_uuid
from controlplane.tokens import hash_token


class PGSessionStore(PGBase):
    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        key = parse_uuid(user_id)
        status = "UPDATE 0"
        if key is not None:
            status = await self._execute(
                "UPDATE users SET password_hash=$1 WHERE id=$2", password_hash, key
            )
        if status.endswith(" 0"):
            raise NotFound(f"user {user_id} not found")

    async def password_hash(self, user_id: str) -> str:
        key = parse_uuid(user_id)
        if key is None:
            return ""
        row = await self._fetchrow("SELECT password_hash FROM users WHERE id=$1", key)
        return "" if row is None else str(row["password_hash"])

    async def revoke_user_token(self, token: str) -> bool:
        status = await self._execute("DELETE FROM user_tokens WHERE hash=$1", hash_token(token))
        self.auth_cache.invalidate()  # this replica at once; the others by the NOTIFY
        return not status.endswith(" 0")

    async def revoke_user_tokens(self, user_id: str) -> int:
        key = parse_uuid(user_id)
        if key is None:
            return 0
        status = await self._execute("DELETE FROM user_tokens WHERE user_id=$1", key)
        self.auth_cache.invalidate()
        return int(status.split()[-1])

    async def live_user_token_hashes(self, hashes: Collection[str]) -> set[str]:
        """Which of these token hashes still sign a user in (not revoked, not expired)."""
        if not hashes:
            return set()
        rows = await self._fetch(
            "SELECT hash FROM user_tokens WHERE hash = ANY($1::text[])"
            " AND (expires_at IS NULL OR expires_at > $2)",
            list(hashes),
            now(),
        )
        return {r["hash"] for r in rows}

    async def set_agent_ssh_host_key(self, agent_id: str, public_key: str) -> None:
        key = parse_uuid(agent_id)
        if key is None:
            raise NotFound(f"agent {agent_id} not found")
        await self._execute(
            "INSERT INTO agent_ssh_host_keys (agent_id, public_key, updated_at)"
            " VALUES ($1, $2, $3) ON CONFLICT (agent_id) DO UPDATE SET"
            " public_key=excluded.public_key, updated_at=excluded.updated_at"
            " WHERE agent_ssh_host_keys.public_key <> excluded.public_key",
            key,
            public_key,
            now(),
        )

    async def agent_ssh_host_key(self, agent_id: str) -> str:
        key = parse_uuid(agent_id)
        if key is None:
            return ""
        row = await self._fetchrow(
            "SELECT public_key FROM agent_ssh_host_keys WHERE agent_id=$1", key
        )
        return "" if row is None else str(row["public_key"])
