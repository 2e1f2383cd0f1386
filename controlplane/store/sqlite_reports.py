"""The store's agent-report part: startup, lifecycle, connection times, app health
and traffic stats."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from typing import Any

from agent.sdk.models import Stats
from controlplane.store.records import AgentRecord, AppRecord, AppSpec, StatsRecord, merge_stats
from controlplane.store.sqlite_base import SQLiteBase, _now, _req_dt, _ts


class ReportStore(SQLiteBase):
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

    async def agent_heartbeats(self, agent_ids: list[str], now: datetime) -> None:
        stamp = _ts(now)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE agents SET last_connected_at=?, updated_at=? WHERE id=?",
                [(stamp, stamp, agent_id) for agent_id in agent_ids],
            )

        await self._run(self._tx, op)

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

        return await self._read(op)

    async def set_app_healths(self, agent_id: str, healths: dict[str, str]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for app_id, health in healths.items():
                conn.execute(
                    "UPDATE apps SET health=? WHERE id=? AND agent_id=?", (health, app_id, agent_id)
                )

        await self._run(self._tx, op)

    async def insert_stats(
        self,
        agent: AgentRecord,
        owner_id: str,
        stats: Stats,
        now: datetime,
        *,
        merge_within: float = 0.0,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE workspaces SET last_used_at=? WHERE id=?", (_ts(now), agent.workspace_id)
            )
            if merge_within > 0 and _merge_into_newest(conn, agent.id, stats, now, merge_within):
                return
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

        return await self._read(op)


def _merge_into_newest(
    conn: sqlite3.Connection, agent_id: str, stats: Stats, now: datetime, within: float
) -> bool:
    row = conn.execute(
        "SELECT * FROM agent_stats WHERE agent_id=? ORDER BY created_at DESC, id DESC LIMIT 1",
        (agent_id,),
    ).fetchone()
    if row is None or _req_dt(row["created_at"]) <= now - timedelta(seconds=within):
        return False
    merged = merge_stats(
        Stats(
            conns_by_proto=json.loads(row["conns_by_proto"]),
            num_comms=row["num_comms"],
            rx_packets=row["rx_packets"],
            rx_bytes=row["rx_bytes"],
            tx_packets=row["tx_packets"],
            tx_bytes=row["tx_bytes"],
        ),
        stats,
    )
    conn.execute(
        "UPDATE agent_stats SET conns_by_proto=?, num_comms=?, rx_packets=?, rx_bytes=?,"
        " tx_packets=?, tx_bytes=? WHERE id=?",
        (
            json.dumps(merged.conns_by_proto),
            merged.num_comms,
            merged.rx_packets,
            merged.rx_bytes,
            merged.tx_packets,
            merged.tx_bytes,
            row["id"],
        ),
    )
    return True


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
