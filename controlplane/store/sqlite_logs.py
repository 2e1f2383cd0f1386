"""The store's startup-log part (capped, de-duplicated appends and reads by id) and the
agent metadata (the latest result per key)."""

from __future__ import annotations

import sqlite3

from controlplane.store.base import NotFound
from controlplane.store.logcap import plan_append
from controlplane.store.records import (
    AppendLogsResult,
    MetadataRecord,
    NewStartupLog,
    StartupLogRecord,
)
from controlplane.store.sqlite_base import SQLiteBase, _now, _req_dt, _ts


class LogStore(SQLiteBase):
    async def append_startup_logs(
        self,
        agent_id: str,
        logs: list[NewStartupLog],
        *,
        cap_bytes: int,
        stream: str = "",
        first_seq: int = 0,
    ) -> AppendLogsResult:
        def op(conn: sqlite3.Connection) -> AppendLogsResult:
            row = conn.execute(
                "SELECT startup_logs_length, startup_logs_overflowed, startup_logs_stream,"
                " startup_logs_next_seq FROM agents WHERE id=?",
                (agent_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"agent {agent_id} not found")
            if row["startup_logs_overflowed"]:
                return AppendLogsResult(0, 0, None, True, False)
            plan = plan_append(
                logs,
                stored_length=row["startup_logs_length"],
                stored_stream=row["startup_logs_stream"],
                stored_next_seq=row["startup_logs_next_seq"],
                cap_bytes=cap_bytes,
                stream=stream,
                first_seq=first_seq,
            )
            first_id: int | None = None
            for line in plan.kept:
                cursor = conn.execute(
                    "INSERT INTO agent_startup_logs (agent_id, created_at, output, level)"
                    " VALUES (?, ?, ?, ?)",
                    (agent_id, _ts(line.created_at), line.output, line.level),
                )
                if first_id is None:
                    first_id = cursor.lastrowid
            if plan.update_agent:
                conn.execute(
                    "UPDATE agents SET startup_logs_length=?, startup_logs_overflowed=?,"
                    " startup_logs_stream=?, startup_logs_next_seq=?, updated_at=? WHERE id=?",
                    (
                        plan.length,
                        int(plan.overflowed),
                        stream,
                        plan.next_seq,
                        _ts(_now()),
                        agent_id,
                    ),
                )
            return AppendLogsResult(
                len(plan.kept), plan.skip, first_id, plan.overflowed, plan.overflowed
            )

        return await self._run(self._tx, op)

    async def upsert_agent_metadata(self, rows: list[MetadataRecord]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            # An agent deleted meanwhile (a new build) takes its rows with it: skip those.
            conn.executemany(
                "INSERT INTO agent_metadata (agent_id, key, value, error, collected_at)"
                " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM agents WHERE id=?)"
                " ON CONFLICT (agent_id, key) DO UPDATE SET value=excluded.value,"
                " error=excluded.error, collected_at=excluded.collected_at",
                [
                    (r.agent_id, r.key, r.value, r.error, _ts(r.collected_at), r.agent_id)
                    for r in rows
                ],
            )

        await self._run(self._tx, op)

    async def list_agent_metadata(self, agent_id: str) -> list[MetadataRecord]:
        def op() -> list[MetadataRecord]:
            rows = self.conn.execute(
                "SELECT * FROM agent_metadata WHERE agent_id=? ORDER BY key", (agent_id,)
            ).fetchall()
            return [
                MetadataRecord(
                    r["agent_id"], r["key"], r["value"], r["error"], _req_dt(r["collected_at"])
                )
                for r in rows
            ]

        return await self._read(op)

    async def list_startup_logs(
        self, agent_id: str, *, after: int = 0, before: int = 0, limit: int = 50_000
    ) -> list[StartupLogRecord]:
        def op() -> list[StartupLogRecord]:
            sql = "SELECT * FROM agent_startup_logs WHERE agent_id=? AND id>?"
            params: list[object] = [agent_id, after]
            if before > 0:
                sql += " AND id<?"
                params.append(before)
            rows = self.conn.execute(sql + " ORDER BY id LIMIT ?", (*params, limit)).fetchall()
            return [
                StartupLogRecord(
                    r["id"], r["agent_id"], _req_dt(r["created_at"]), r["output"], r["level"]
                )
                for r in rows
            ]

        return await self._read(op)
