"""The store's sign-in part: password hashes, revoking user session tokens, and the SSH
host keys agents report (what users check the agents they sign in to against)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from controlplane.store.base import NotFound
from controlplane.store.sqlite_base import SQLiteBase, _now, _ts
from controlplane.tokens import hash_token

# SQLite's default limit on host parameters is 32766; stay well below it per query.
_BATCH = 500


class SessionStore(SQLiteBase):
    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE users SET password_hash=? WHERE id=?", (password_hash, user_id)
            )
            if cursor.rowcount == 0:
                raise NotFound(f"user {user_id} not found")

        await self._run(self._tx, op)

    async def password_hash(self, user_id: str) -> str:
        def op() -> str:
            row = self.conn.execute(
                "SELECT password_hash FROM users WHERE id=?", (user_id,)
            ).fetchone()
            return "" if row is None else str(row["password_hash"])

        return await self._read(op)

    async def revoke_user_token(self, token: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM user_tokens WHERE hash=?", (hash_token(token),))
            return cursor.rowcount > 0

        return await self._run(self._tx, op)

    async def revoke_user_tokens(self, user_id: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM user_tokens WHERE user_id=?", (user_id,)).rowcount

        return await self._run(self._tx, op)

    async def live_user_token_hashes(self, hashes: Collection[str]) -> set[str]:
        """Which of these token hashes still sign a user in (not revoked, not expired)."""
        wanted = list(hashes)

        def op() -> set[str]:
            now = _ts(_now())
            live: set[str] = set()
            for start in range(0, len(wanted), _BATCH):
                batch = wanted[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                rows = self.conn.execute(
                    f"SELECT hash FROM user_tokens WHERE hash IN ({marks})"
                    " AND (expires_at IS NULL OR expires_at > ?)",
                    (*batch, now),
                ).fetchall()
                live.update(row["hash"] for row in rows)
            return live

        return await self._read(op)

    async def set_agent_ssh_host_key(self, agent_id: str, public_key: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO agent_ssh_host_keys (agent_id, public_key, updated_at)"
                " VALUES (?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET"
                " public_key=excluded.public_key, updated_at=excluded.updated_at"
                " WHERE public_key != excluded.public_key",
                (agent_id, public_key, _ts(_now())),
            )

        await self._run(self._tx, op)

    async def agent_ssh_host_key(self, agent_id: str) -> str:
        def op() -> str:
            row = self.conn.execute(
                "SELECT public_key FROM agent_ssh_host_keys WHERE agent_id=?", (agent_id,)
            ).fetchone()
            return "" if row is None else str(row["public_key"])

        return await self._read(op)
