"""The PostgreSQL store's agent-report part: startup, lifecycle, connection times, app
health and traffic stats.

Refreshes come batched from :class:`controlplane.refresher.ConnectionRefresher`: one
``UPDATE ... FROM unnest($1::uuid[])`` per tick for all of a replica's agents. Stats
reports are batched here the same way: every report that arrives within ``STATS_DELAY``
is one multi-row insert in one transaction, and each request returns once its row is
committed. A replica runs one batch's transaction at a time: a batch begun before the
previous one committed would not see the row that one is inserting (an agent's first
report) and would insert a second row instead of merging into it. The 30-day purge is a
job (``pg_base``), not part of the insert.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from agent.sdk.models import Stats
from controlplane.store.pg_base import PGBase, now, parse_uuid, sid
from controlplane.store.records import AgentRecord, AppRecord, StatsRecord, merge_stats
from controlplane.store.sqlite_reports import _app_from_json

STATS_DELAY: Final = 0.05  # seconds a stats row may wait to share a commit
MAX_STATS_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class _StatsRow:
    agent_id: str
    workspace_id: str
    user_id: str
    created_at: datetime
    stats: Stats
    merge_within: float


@dataclass(slots=True)
class _Out:
    """A row as it will be after the batch: an existing row to update (``id``) or a new
    one to insert."""

    row: _StatsRow
    stats: Stats
    id: int | None = None
    dirty: bool = True


class PGReportStore(PGBase):
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        super().__init__(pool, url)
        self._stats_pending: list[_StatsRow] = []
        self._stats_flushed: asyncio.Future[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None

    async def _update_agent(self, agent_id: str, sql: str, *params: Any) -> None:
        key = parse_uuid(agent_id)
        if key is None:
            return
        n = len(params)
        await self._execute(
            f"UPDATE agents SET {sql}, updated_at=${n + 1} WHERE id=${n + 2}", *params, now(), key
        )

    async def set_agent_startup(self, agent_id: str, version: str, expanded_directory: str) -> None:
        await self._update_agent(
            agent_id, "version=$1, expanded_directory=$2", version, expanded_directory
        )

    async def set_agent_lifecycle(self, agent_id: str, state: str) -> None:
        await self._update_agent(agent_id, "lifecycle_state=$1", state)

    async def agent_connected(self, agent_id: str, now: datetime) -> None:
        await self._update_agent(
            agent_id,
            "first_connected_at=COALESCE(first_connected_at, $1), last_connected_at=$1",
            now,
        )

    async def agent_heartbeats(self, agent_ids: list[str], now: datetime) -> None:
        keys = [k for k in (parse_uuid(a) for a in agent_ids) if k is not None]
        if not keys:
            return
        await self._execute(
            "UPDATE agents SET last_connected_at=$2, updated_at=$2"
            " FROM unnest($1::uuid[]) AS refreshed(id) WHERE agents.id = refreshed.id",
            keys,
            now,
        )

    async def agent_disconnected(self, agent_id: str, now: datetime) -> None:
        await self._update_agent(agent_id, "disconnected_at=$1", now)

    async def list_apps(self, agent_id: str) -> list[AppRecord]:
        key = parse_uuid(agent_id)
        if key is None:
            return []
        rows = await self._fetch("SELECT * FROM apps WHERE agent_id=$1 ORDER BY slug", key)
        return [
            AppRecord(
                sid(r["id"]), sid(r["agent_id"]), _app_from_json(dict(r["spec"])), r["health"]
            )
            for r in rows
        ]

    async def set_app_healths(self, agent_id: str, healths: dict[str, str]) -> None:
        key = parse_uuid(agent_id)
        pairs = [(k, h) for k, h in ((parse_uuid(a), h) for a, h in healths.items()) if k]
        if key is None or not pairs:
            return
        await self._execute(
            "UPDATE apps SET health=v.health FROM unnest($1::uuid[], $2::text[]) AS v(id, health)"
            " WHERE apps.id = v.id AND apps.agent_id = $3",
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            key,
        )

    # ------------------------------------------------------------ stats, batched

    async def insert_stats(
        self,
        agent: AgentRecord,
        owner_id: str,
        stats: Stats,
        now: datetime,
        *,
        merge_within: float = 0.0,
    ) -> None:
        row = _StatsRow(agent.id, agent.workspace_id, owner_id, now, stats, merge_within)
        self._stats_pending.append(row)
        if self._stats_flushed is None:
            flushed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            flushed.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._stats_flushed = flushed
            self._stats_task = asyncio.create_task(self._flush_stats(flushed, self._stats_task))
        # Shielded: one request going away must not cancel the others' shared insert.
        await asyncio.shield(self._stats_flushed)

    async def _flush_stats(
        self, done: asyncio.Future[None], previous: asyncio.Task[None] | None
    ) -> None:
        if len(self._stats_pending) < MAX_STATS_BATCH:
            await asyncio.sleep(STATS_DELAY)
        rows, self._stats_pending, self._stats_flushed = self._stats_pending, [], None
        if previous is not None:
            # After the previous batch commits (see the module docstring). asyncio.wait, as
            # this batch being cancelled must not cancel that one.
            await asyncio.wait({previous})
        try:
            await self._insert_stats_rows(rows)
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)

    async def _insert_stats_rows(self, rows: list[_StatsRow]) -> None:
        """One transaction for the batch: a report within ``merge_within`` of its agent's
        newest row is added into it (as the SQLite store does, bounding rows per agent),
        the others are one multi-row insert."""
        last_used: dict[str, datetime] = {}
        for r in rows:
            last_used[r.workspace_id] = max(
                r.created_at, last_used.get(r.workspace_id, r.created_at)
            )
        merging = sorted({r.agent_id for r in rows if r.merge_within > 0})
        async with self._tx() as conn:
            newest: dict[str, _Out] = {}
            if merging:
                # Locked, so two replicas merging into the same row add both reports.
                for db in await conn.fetch(
                    "SELECT * FROM agent_stats WHERE id IN (SELECT max(id) FROM agent_stats"
                    " WHERE agent_id = ANY($1::uuid[]) GROUP BY agent_id) ORDER BY id FOR UPDATE",
                    merging,
                ):
                    stored = _StatsRow(
                        sid(db["agent_id"]),
                        sid(db["workspace_id"]),
                        sid(db["user_id"]),
                        db["created_at"],
                        _stats_of(db),
                        0.0,
                    )
                    newest[stored.agent_id] = _Out(stored, stored.stats, db["id"], dirty=False)
            out: list[_Out] = list(newest.values())
            for r in rows:
                previous = newest.get(r.agent_id)
                if (
                    r.merge_within > 0
                    and previous is not None
                    and previous.row.created_at > r.created_at - timedelta(seconds=r.merge_within)
                ):
                    previous.stats = merge_stats(previous.stats, r.stats)
                    previous.dirty = True
                    continue
                newest[r.agent_id] = _Out(r, r.stats)
                out.append(newest[r.agent_id])
            inserts = [o for o in out if o.id is None]
            updates = [o for o in out if o.id is not None and o.dirty]
            if inserts:
                await conn.execute(
                    "INSERT INTO agent_stats (agent_id, workspace_id, user_id, created_at,"
                    " conns_by_proto, num_comms, rx_packets, rx_bytes, tx_packets, tx_bytes)"
                    " SELECT a, w, u, c, p::jsonb, n, rp, rb, tp, tb FROM unnest($1::uuid[],"
                    " $2::uuid[], $3::uuid[], $4::timestamptz[], $5::text[], $6::bigint[],"
                    " $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])"
                    " WITH ORDINALITY AS v(a, w, u, c, p, n, rp, rb, tp, tb, i) ORDER BY i",
                    [o.row.agent_id for o in inserts],
                    [o.row.workspace_id for o in inserts],
                    [o.row.user_id for o in inserts],
                    [o.row.created_at for o in inserts],
                    *_columns([o.stats for o in inserts]),
                )
            if updates:
                await conn.execute(
                    "UPDATE agent_stats SET conns_by_proto=p::jsonb, num_comms=n, rx_packets=rp,"
                    " rx_bytes=rb, tx_packets=tp, tx_bytes=tb FROM unnest($1::bigint[],"
                    " $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],"
                    " $7::bigint[]) AS v(id, p, n, rp, rb, tp, tb) WHERE agent_stats.id = v.id",
                    [o.id for o in updates],
                    *_columns([o.stats for o in updates]),
                )
            await conn.execute(
                "UPDATE workspaces SET last_used_at=v.t"
                " FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, t) WHERE workspaces.id=v.id",
                list(last_used),
                list(last_used.values()),
            )

    async def _close_extra(self) -> None:
        task = self._stats_task
        if task is not None and not task.done():
            # Let the reports already accepted land before the pool closes.
            await asyncio.gather(task, return_exceptions=True)
        await super()._close_extra()

    async def list_stats(self, agent_id: str) -> list[StatsRecord]:
        key = parse_uuid(agent_id)
        if key is None:
            return []
        rows = await self._fetch("SELECT * FROM agent_stats WHERE agent_id=$1 ORDER BY id", key)
        return [
            StatsRecord(
                id=r["id"],
                agent_id=sid(r["agent_id"]),
                workspace_id=sid(r["workspace_id"]),
                user_id=sid(r["user_id"]),
                created_at=r["created_at"],
                conns_by_proto=dict(r["conns_by_proto"]),
                num_comms=r["num_comms"],
                rx_packets=r["rx_packets"],
                rx_bytes=r["rx_bytes"],
                tx_packets=r["tx_packets"],
                tx_bytes=r["tx_bytes"],
            )
            for r in rows
        ]


def _columns(stats: list[Stats]) -> list[list[Any]]:
    return [
        [json.dumps(s.conns_by_proto) for s in stats],
        [s.num_comms for s in stats],
        [s.rx_packets for s in stats],
        [s.rx_bytes for s in stats],
        [s.tx_packets for s in stats],
        [s.tx_bytes for s in stats],
    ]


def _stats_of(row: asyncpg.Record) -> Stats:
    return Stats(
        conns_by_proto=dict(row["conns_by_proto"]),
        num_comms=row["num_comms"],
        rx_packets=row["rx_packets"],
        rx_bytes=row["rx_bytes"],
        tx_packets=row["tx_packets"],
        tx_bytes=row["tx_bytes"],
    )
