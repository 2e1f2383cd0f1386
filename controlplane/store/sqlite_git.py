"""The store's git part: per-user Git SSH keys, git-auth providers and credentials."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from controlplane.sshkeys import generate_ed25519
from controlplane.store.base import NotFound
from controlplane.store.records import GitAuthLink, GitAuthProvider, GitSSHKeyRecord
from controlplane.store.sqlite_base import SQLiteBase, _dt, _now, _req_dt, _ts


class GitStore(SQLiteBase):
    async def git_ssh_key(self, user_id: str) -> GitSSHKeyRecord | None:
        def op() -> GitSSHKeyRecord | None:
            row = self.conn.execute(
                "SELECT * FROM git_ssh_keys WHERE user_id=?", (user_id,)
            ).fetchone()
            if row is None:
                return None
            return GitSSHKeyRecord(row["user_id"], row["public_key"], row["private_key"])

        return await self._read(op)

    async def regenerate_git_ssh_key(self, user_id: str) -> GitSSHKeyRecord:
        row = await self._read(
            lambda: self.conn.execute("SELECT name FROM users WHERE id=?", (user_id,)).fetchone()
        )
        if row is None:
            raise NotFound(f"user {user_id} not found")
        public, private = generate_ed25519(f"wsagent:{row['name']}")

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

        return await self._read(op)

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

        return await self._read(op)
