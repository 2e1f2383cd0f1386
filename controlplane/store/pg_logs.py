"""The PostgreSQL store's startup-log and agent-metadata part: capped, de-duplicated log
appends and reads by id; the latest metadata result per agent and key.

The agent's row is locked (``FOR UPDATE``) for the append, so two replicas appending for
the same agent at once keep the cap and the stream's sequence exact.
"""

from __future__ import annotations

from controlplane.store.base import NotFound
from controlplane.store.logcap import plan_append
from controlplane.store.pg_base import LOGS_CHANNEL, PGBase, now, parse_uuid, sid
from controlplane.store.records import (
    AppendLogsResult,
    MetadataRecord,
    NewStartupLog,
    StartupLogRecord,
)


class PGLogStore(PGBase):
    async def append_startup_logs(
        self,
        agent_id: str,
        logs: list[NewStartupLog],
        *,
        cap_bytes: int,
        stream: str = "",
        first_seq: int = 0,
    ) -> AppendLogsResult:
        key = parse_uuid(agent_id)
        if key is None:
            raise NotFound(f"agent {agent_id} not found")
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "SELECT startup_logs_length, startup_logs_overflowed, startup_logs_stream,"
                " startup_logs_next_seq FROM agents WHERE id=$1 FOR UPDATE",
                key,
            )
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
            if plan.kept:
                ids = await conn.fetch(
                    "INSERT INTO agent_startup_logs (agent_id, created_at, output, level)"
                    " SELECT $1, c, o, l FROM unnest($2::timestamptz[], $3::text[], $4::text[])"
                    " WITH ORDINALITY AS v(c, o, l, n) ORDER BY n RETURNING id",
                    key,
                    [line.created_at for line in plan.kept],
                    [line.output for line in plan.kept],
                    [line.level for line in plan.kept],
                )
                first_id = min(r["id"] for r in ids)
                # Followers on every replica read the new lines now (controlplane.pgbus).
                await conn.execute("SELECT pg_notify($1, $2)", LOGS_CHANNEL, str(key))
            if plan.update_agent:
                await conn.execute(
                    "UPDATE agents SET startup_logs_length=$1, startup_logs_overflowed=$2,"
                    " startup_logs_stream=$3, startup_logs_next_seq=$4, updated_at=$5"
                    " WHERE id=$6",
                    plan.length,
                    plan.overflowed,
                    stream,
                    plan.next_seq,
                    now(),
                    key,
                )
        return AppendLogsResult(
            len(plan.kept), plan.skip, first_id, plan.overflowed, plan.overflowed
        )

    async def upsert_agent_metadata(self, rows: list[MetadataRecord]) -> None:
        latest: dict[tuple[str, str], MetadataRecord] = {}
        for r in rows:
            if parse_uuid(r.agent_id) is not None:
                latest[(r.agent_id, r.key)] = r  # one statement may touch a row only once
        if not latest:
            return
        values = list(latest.values())
        # An agent deleted meanwhile (a new build) takes its rows with it: skip those.
        await self._execute(
            "INSERT INTO agent_metadata (agent_id, key, value, error, collected_at)"
            " SELECT v.a, v.k, v.v, v.e, v.c FROM unnest($1::uuid[], $2::text[], $3::text[],"
            " $4::text[], $5::timestamptz[]) AS v(a, k, v, e, c)"
            " WHERE EXISTS (SELECT 1 FROM agents WHERE id = v.a)"
            " ON CONFLICT (agent_id, key) DO UPDATE SET value=excluded.value,"
            " error=excluded.error, collected_at=excluded.collected_at",
            [r.agent_id for r in values],
            [r.key for r in values],
            [r.value for r in values],
            [r.error for r in values],
            [r.collected_at for r in values],
        )

    async def list_agent_metadata(self, agent_id: str) -> list[MetadataRecord]:
        key = parse_uuid(agent_id)
        if key is None:
            return []
        rows = await self._fetch("SELECT * FROM agent_metadata WHERE agent_id=$1 ORDER BY key", key)
        return [
            MetadataRecord(sid(r["agent_id"]), r["key"], r["value"], r["error"], r["collected_at"])
            for r in rows
        ]

    async def list_startup_logs(
        self, agent_id: str, *, after: int = 0, before: int = 0, limit: int = 50_000
    ) -> list[StartupLogRecord]:
        key = parse_uuid(agent_id)
        if key is None:
            return []
        sql = "SELECT * FROM agent_startup_logs WHERE agent_id=$1 AND id>$2"
        params: list[object] = [key, after]
        if before > 0:
            sql += " AND id<$3"
            params.append(before)
        rows = await self._fetch(sql + f" ORDER BY id LIMIT ${len(params) + 1}", *params, limit)
        return [
            StartupLogRecord(r["id"], sid(r["agent_id"]), r["created_at"], r["output"], r["level"])
            for r in rows
        ]
