"""Agent metadata results, coalesced: at most one store write per agent and key per tick.

Coder's 2,000-agent scale test found the metadata posts (each an UPDATE and a NOTIFY) to be
the largest part of its database load. Here a post only replaces the agent's latest value
in memory; once per ``interval`` (1 s) every value that changed is written in one
transaction, the newest per (agent, key) only. Readers see the store overlaid with what
is still pending or being written (a value leaves memory only once its write committed),
so nothing reads stale; a crash loses at most one tick of values, which
the agents post again on their next interval. Watchers (the dashboard) are woken at once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Final

import structlog
from aiohttp import web

from agent.sdk.agentmetadata import MetadataResult, WorkspaceAgentMetadata
from controlplane.appkeys import STORE
from controlplane.store.base import Store
from controlplane.store.records import AgentRecord, MetadataRecord

log = structlog.get_logger()

FLUSH_INTERVAL: Final = 1.0
# Values waiting for the next write; past this many the write happens at once.
MAX_PENDING: Final = 100_000


class MetadataBatcher:
    def __init__(self, store: Store, interval: float = FLUSH_INTERVAL) -> None:
        self._store = store
        self.interval = interval
        # agent id -> key -> newest record: waiting for the next write, and in the write
        # under way (kept until it commits, so a reader never sees neither).
        self._pending: dict[str, dict[str, MetadataRecord]] = {}
        self._pending_rows = 0
        self._writing: dict[str, dict[str, MetadataRecord]] = {}
        self._write_lock = asyncio.Lock()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self.closing = asyncio.Event()
        # For the load benchmark and the metrics: posts taken, rows and transactions written.
        self.posts = 0
        self.rows_written = 0
        self.writes = 0

    def put(self, record: MetadataRecord) -> None:
        self.posts += 1
        by_key = self._pending.setdefault(record.agent_id, {})
        if record.key not in by_key:
            self._pending_rows += 1
        by_key[record.key] = record
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="metadata.flush")
        if self._pending_rows >= MAX_PENDING:
            self._kick.set()
        for event in self._waiters.get(record.agent_id, ()):
            event.set()

    def pending_for(self, agent_id: str) -> dict[str, MetadataRecord]:
        return self._writing.get(agent_id, {}) | self._pending.get(agent_id, {})

    async def _run(self) -> None:
        while self._pending:
            try:
                await asyncio.wait_for(self._kick.wait(), self.interval)
            except TimeoutError:
                pass
            self._kick.clear()
            await self.flush()

    async def flush(self) -> None:
        async with self._write_lock:  # one write at a time; a second flush waits for it
            if not self._pending:
                return
            writing, self._pending, self._pending_rows = self._pending, {}, 0
            self._writing = writing
            rows = [row for by_key in writing.values() for row in by_key.values()]
            try:
                await self._store.upsert_agent_metadata(rows)
            except BaseException as exc:
                # Keep what no newer post replaced meanwhile; the next flush tries again
                # (also after a cancelled write: close() flushes once more).
                self._restore(rows)
                if not isinstance(exc, Exception):
                    raise
                log.warning("metadata.write_failed", rows=len(rows), error=str(exc))
                return
            finally:
                self._writing = {}
        self.writes += 1
        self.rows_written += len(rows)

    def _restore(self, rows: list[MetadataRecord]) -> None:
        for row in rows:
            by_key = self._pending.setdefault(row.agent_id, {})
            if row.key not in by_key:
                by_key[row.key] = row
                self._pending_rows += 1

    # ---------------------------------------------------------------- watchers

    def subscribe(self, agent_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(agent_id, set()).add(event)
        return event

    def unsubscribe(self, agent_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(agent_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[agent_id]

    async def close(self) -> None:
        self.closing.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()


METADATA: web.AppKey[MetadataBatcher] = web.AppKey("metadata_batcher")


async def current_metadata(
    app: web.Application, agent: AgentRecord, now: datetime | None = None
) -> list[WorkspaceAgentMetadata]:
    """Every key the agent's template defines, with its latest result (empty before the
    first post), sorted by key as Coder does so the dashboard's rows stay put."""
    if not agent.spec.metadata:
        return []
    now = now or datetime.now(UTC)
    stored = {r.key: r for r in await app[STORE].list_agent_metadata(agent.id)}
    stored.update(app[METADATA].pending_for(agent.id))
    out = []
    for description in sorted(agent.spec.metadata, key=lambda m: m.key):
        record = stored.get(description.key)
        if record is None:
            result = MetadataResult(None, 0, "", "")
        else:
            age = max(0, int((now - record.collected_at).total_seconds()))
            result = MetadataResult(record.collected_at, age, record.value, record.error)
        out.append(WorkspaceAgentMetadata(result, description))
    return out
