"""The PostgreSQL store's git part: per-user Git SSH keys, git-auth providers and
credentials."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from controlplane.sshkeys import generate_ed25519
from controlplane.store.base import NotFound
from controlplane.store.pg_base import GITAUTH_CHANNEL, PGBase, now, parse_uuid, sid, utc
from controlplane.store.records import GitAuthLink, GitAuthProvider, GitSSHKeyRecord


class PGGitStore(PGBase):
    async def git_ssh_key(self, user_id: str) -> GitSSHKeyRecord | None:
        key = parse_uuid(user_id)
        if key is None:
            return None
        row = await self._fetchrow("SELECT * FROM git_ssh_keys WHERE user_id=$1", key)
        if row is None:
            return None
        return GitSSHKeyRecord(sid(row["user_id"]), row["public_key"], row["private_key"])

    async def regenerate_git_ssh_key(self, user_id: str) -> GitSSHKeyRecord:
        key = parse_uuid(user_id)
        row = (
            None if key is None else await self._fetchrow("SELECT name FROM users WHERE id=$1", key)
        )
        if row is None:
            raise NotFound(f"user {user_id} not found")
        public, private = generate_ed25519(f"wsagent:{row['name']}")
        await self._execute(
            "INSERT INTO git_ssh_keys (user_id, public_key, private_key, created_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET"
            " public_key=excluded.public_key, private_key=excluded.private_key,"
            " created_at=excluded.created_at",
            key,
            public,
            private,
            now(),
        )
        return GitSSHKeyRecord(user_id, public, private)

    # ------------------------------------------------------------ git auth

    async def upsert_gitauth_provider(self, provider: GitAuthProvider) -> None:
        await self._execute(
            "INSERT INTO gitauth_providers (id, regex, type, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (id) DO UPDATE SET regex=excluded.regex, type=excluded.type",
            provider.id,
            provider.regex,
            provider.type,
            now(),
        )

    async def list_gitauth_providers(self) -> list[GitAuthProvider]:
        rows = await self._fetch("SELECT * FROM gitauth_providers ORDER BY created_at, id")
        return [GitAuthProvider(r["id"], r["regex"], r["type"]) for r in rows]

    async def set_gitauth_link(
        self,
        provider_id: str,
        user_id: str,
        username: str,
        password: str,
        expires_at: datetime | None = None,
    ) -> None:
        key = parse_uuid(user_id)
        async with self._tx() as conn:
            if (
                await conn.fetchval("SELECT 1 FROM gitauth_providers WHERE id=$1", provider_id)
                is None
            ):
                raise NotFound(f"git auth provider {provider_id!r} not found")
            if key is None:
                raise NotFound(f"user {user_id} not found")
            try:
                await conn.execute(
                    "INSERT INTO gitauth_links"
                    " (provider_id, user_id, username, password, updated_at, expires_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provider_id, user_id) DO UPDATE"
                    " SET username=excluded.username, password=excluded.password,"
                    " updated_at=excluded.updated_at, expires_at=excluded.expires_at",
                    provider_id,
                    key,
                    username,
                    password,
                    now(),
                    expires_at,
                )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound(f"user {user_id} not found") from None
            # Every replica's git-auth waiters for this user wake up (docs/scaling.md).
            await conn.execute(
                "SELECT pg_notify($1, $2)", GITAUTH_CHANNEL, f"{provider_id}\n{user_id}"
            )

    async def get_gitauth_link(self, provider_id: str, user_id: str) -> GitAuthLink | None:
        key = parse_uuid(user_id)
        if key is None:
            return None
        r = await self._fetchrow(
            "SELECT * FROM gitauth_links WHERE provider_id=$1 AND user_id=$2", provider_id, key
        )
        if r is None:
            return None
        return GitAuthLink(
            r["provider_id"],
            sid(r["user_id"]),
            r["username"],
            r["password"],
            r["updated_at"],
            utc(r["expires_at"]),
        )
