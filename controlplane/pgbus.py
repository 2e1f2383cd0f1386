"""The replicas' bus over PostgreSQL LISTEN/NOTIFY (docs/scaling.md, "Routing").

Every replica listens on ``wsagent_all`` (claims and releases of agent sockets, agent
nodes, revocations) and on a channel of its own (requests for agents whose socket it
holds, replies to requests it sent). Ownership is also a row in ``agent_sockets``, read at
start so a replica that starts late knows where sockets are. Only set-up messages travel
here, each a JSON object; one over PostgreSQL's 8,000-byte payload limit goes as ordered
chunks in one transaction (``controlplane.buschunks``), up to :data:`MAX_MESSAGE_BYTES`.
Terminal and stream bytes go agent -> replica directly (the dial-back carries the asking
replica's URL). Git-auth credentials saved on any replica (or by ``wsagent admin``) wake the
``listen`` waiters on every replica through ``wsagent_gitauth``, startup-log appends wake
the ``follow`` sockets through ``wsagent_logs``, and a revoked agent token makes every
replica's sockets of that agent check their token at once (``wsagent_revoked``). Any change
that can end a token or a socket's build (``wsagent_auth``, sent by the database's
triggers) clears this replica's token cache as the notification arrives; the cache is on
only while this connection listens (``controlplane.store.tokencache``).

Messages about agents are delivered in one lane per agent (``controlplane.buslanes``): in
order for each agent, and an agent that stops reading its socket delays only its own.

A stale row (its replica died) is ignored: routes check the agent's ``last_connected_at``
(refreshed by the live owner) before they route, and the agent's reconnect to another
replica claims the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from controlplane.buschunks import ChunkError, Reassembler, is_chunk, split
from controlplane.buslanes import Lanes
from controlplane.coordinator import MAX_VALUE_BYTES, AgentNotConnected, Coordinator, TooLarge
from controlplane.gitauth import GitAuthNotifier
from controlplane.store.pg_base import (
    AUTH_CHANNEL,
    GITAUTH_CHANNEL,
    LOGS_CHANNEL,
    REVOKED_CHANNEL,
    UNAVAILABLE,
    parse_uuid,
)
from controlplane.store.tokencache import AuthCache

log = structlog.get_logger()

ALL: Final = "wsagent_all"
MAX_PAYLOAD: Final = 7900  # PostgreSQL refuses NOTIFY payloads of 8,000 bytes and more
# The largest message the bus carries, chunked: twice the largest value a coordinate socket
# accepts, so any request or reply an agent or client can send crosses replicas (its JSON
# envelope adds a few hundred bytes). Read at send time.
MAX_MESSAGE_BYTES: Final = 2 * MAX_VALUE_BYTES
# Unfinished chunked messages held at once; the oldest is dropped past it.
MAX_BUFFERED_BYTES: Final = 2 * MAX_MESSAGE_BYTES
# A transaction's chunks arrive together: one still missing after this never comes.
CHUNK_TIMEOUT: Final = 10.0
# Notifications read but not yet handled: 10,000 payloads of up to 8,000 bytes would be
# 80 MB; this keeps the inbox to a few whole messages' worth of chunks.
INBOX_BYTES: Final = 8 * MAX_MESSAGE_BYTES
# Messages waiting for delivery, per agent and in all (controlplane.buslanes).
LANE_MESSAGES: Final = 1000
LANE_AGENT_BYTES: Final = 2 * MAX_MESSAGE_BYTES
LANE_BYTES: Final = 16 * MAX_MESSAGE_BYTES
RECONNECT_MAX: Final = 5.0


def replica_channel(replica_id: str) -> str:
    # Channel names are identifiers (63 bytes at most): a hash keeps any replica id valid.
    return "wsagent_r_" + hashlib.sha256(replica_id.encode()).hexdigest()[:20]


class PgBus:
    def __init__(
        self,
        url: str,
        replica_id: str,
        coordinator: Coordinator,
        gitauth: GitAuthNotifier,
        *,
        stale_after: float,
        logs_appended: Callable[[str], None] | None = None,
        auth_cache: AuthCache | None = None,
    ) -> None:
        self.url = url
        self.replica_id = replica_id
        self._channel = replica_channel(replica_id)
        self._coordinator = coordinator
        self._gitauth = gitauth
        self._stale_after = stale_after
        self._logs_appended = logs_appended
        self._auth_cache = auth_cache
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._connected = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)
        self._inbox_bytes = 0  # payload characters queued (PostgreSQL's are mostly ASCII)
        self._worker: asyncio.Task[None] | None = None
        self._chunks = Reassembler(
            max_message=MAX_MESSAGE_BYTES, max_buffered=MAX_BUFFERED_BYTES, timeout=CHUNK_TIMEOUT
        )
        # Chunked message ids: this bus's tag (to skip our own broadcasts) and a counter.
        self._tag = secrets.token_hex(6)
        self._ids = itertools.count()
        self._lanes: Lanes[dict[str, Any]] = Lanes(
            self._deliver,
            max_per_lane=LANE_MESSAGES,
            max_lane_bytes=LANE_AGENT_BYTES,
            max_bytes=LANE_BYTES,
        )

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2)
        self._worker = asyncio.create_task(self._work())
        self._task = asyncio.create_task(self._listen_forever())
        # A replica's old rows are from its previous life: none of them is a socket now.
        with contextlib.suppress(*UNAVAILABLE, asyncpg.PostgresError):
            await self._execute("DELETE FROM agent_sockets WHERE replica_id=$1", self.replica_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 10.0)

    async def close(self) -> None:
        for task in (self._task, self._worker):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._task, self._worker) if t is not None), return_exceptions=True
        )
        await self._lanes.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 5.0)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5.0)

    # ------------------------------------------------------------ Bus (coordinator)

    async def claimed(self, agent_id: str, peer_id: str, since: float) -> None:
        key = parse_uuid(agent_id)
        if key is None:
            return
        message = self._message("claim", agent=agent_id, peer=peer_id, since=since)
        # A row from a newer socket (on another replica) stays: the newest socket wins.
        await self._execute(
            "WITH up AS (INSERT INTO agent_sockets (agent_id, replica_id, peer_id, since)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (agent_id) DO UPDATE SET"
            " replica_id=excluded.replica_id, peer_id=excluded.peer_id, since=excluded.since"
            " WHERE agent_sockets.since <= excluded.since"
            " RETURNING 1) SELECT pg_notify($5, $6) FROM up",
            key,
            self.replica_id,
            peer_id,
            datetime.fromtimestamp(since, UTC),
            ALL,
            message,
        )

    async def released(self, agent_id: str, peer_id: str) -> None:
        key = parse_uuid(agent_id)
        if key is None:
            return
        message = self._message("release", agent=agent_id, peer=peer_id)
        await self._execute(
            "WITH gone AS (DELETE FROM agent_sockets WHERE agent_id=$1 AND peer_id=$2"
            " RETURNING 1) SELECT pg_notify($3, $4) FROM gone",
            key,
            peer_id,
            ALL,
            message,
        )

    async def to_agent(self, replica: str, agent_id: str, payload: object) -> None:
        message = self._message("to_agent", agent=agent_id, payload=payload)
        try:
            await self._send(replica_channel(replica), message)
        except TooLarge as exc:
            raise TooLarge(exc.size, exc.limit, f"the request for agent {agent_id}") from None
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise AgentNotConnected(agent_id) from exc

    async def reply(self, replica: str, agent_id: str, value: dict[str, Any]) -> None:
        message = self._message("from_agent", agent=agent_id, value=value)
        try:
            await self._send(replica_channel(replica), message)
        except TooLarge as exc:
            # The asking replica gets an error it can show instead of waiting in vain.
            value = {k: value[k] for k in ("type", "request_id", "session_id") if k in value}
            value["error"] = str(TooLarge(exc.size, exc.limit, "the agent's reply"))
            await self._send(
                replica_channel(replica), self._message("from_agent", agent=agent_id, value=value)
            )

    async def agent_node(self, agent_id: str, node: dict[str, Any]) -> None:
        with contextlib.suppress(TooLarge):  # logged; the clients keep the previous node
            await self._send(ALL, self._message("node", agent=agent_id, node=node))

    async def want_node(self, replica: str, agent_id: str) -> None:
        await self._notify(replica_channel(replica), self._message("want_node", agent=agent_id))

    # ------------------------------------------------------------ plumbing

    def _message(self, kind: str, **fields: Any) -> str:
        value = {"t": kind, "from": self.replica_id, **fields}
        # Raw UTF-8, not \u escapes: the size limits count bytes, and escapes triple them.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        try:
            text.encode()
        except UnicodeEncodeError:
            # A lone surrogate (JSON may carry "\ud800") has no UTF-8 form: escape it.
            text = json.dumps(value, separators=(",", ":"))
        return text

    async def _send(self, channel: str, message: str) -> None:
        """One NOTIFY, or (over one payload) its chunks in one statement, so one transaction:
        they reach every listener together and in order. :class:`TooLarge` past the cap."""
        size = len(message.encode())
        if size <= MAX_PAYLOAD:
            await self._notify(channel, message)
            return
        if size > MAX_MESSAGE_BYTES:
            kind = json.loads(message).get("t")  # rare: worth a parse for a useful log line
            log.warning("bus.message_too_large", size=size, limit=MAX_MESSAGE_BYTES, kind=kind)
            raise TooLarge(size, MAX_MESSAGE_BYTES)
        chunks = split(message, f"{self._tag}-{next(self._ids)}")
        await self._execute(
            "SELECT pg_notify($1, c) FROM unnest($2::text[]) WITH ORDINALITY AS u(c, i) ORDER BY i",
            channel,
            chunks,
        )

    async def _notify(self, channel: str, message: str) -> None:
        await self._execute("SELECT pg_notify($1, $2)", channel, message)

    async def _execute(self, sql: str, *args: Any) -> None:
        if self._pool is None:
            raise asyncpg.InterfaceError("bus is not started")
        async with self._pool.acquire(timeout=5.0) as conn:
            await conn.execute(sql, *args)

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen_once()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("bus.listen_failed", error=str(exc))
            self._connected.clear()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self.url, timeout=5.0)
        self._listener = conn
        self._lost.clear()
        conn.add_termination_listener(lambda _c: self._lost.set())
        try:
            channels = (ALL, self._channel, GITAUTH_CHANNEL, REVOKED_CHANNEL, LOGS_CHANNEL)
            for channel in (AUTH_CHANNEL, *channels):
                await conn.add_listener(channel, self._on_notify)
            if self._auth_cache is not None:
                self._auth_cache.enable()  # from here on every change is heard
            await self._load_owners(conn)
            self._connected.set()
            log.info("bus.listening", replica=self.replica_id)
            await self._lost.wait()
            log.warning("bus.connection_lost", replica=self.replica_id)
        finally:
            if self._auth_cache is not None:
                self._auth_cache.disable()  # changes made meanwhile would go unheard
            self._listener = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    async def _load_owners(self, conn: asyncpg.Connection) -> None:
        """Sockets claimed while we were not listening (a late start, a lost connection)."""
        fresh = datetime.now(UTC) - timedelta(seconds=self._stale_after)
        rows = await conn.fetch(
            "SELECT s.agent_id, s.replica_id, s.peer_id, s.since FROM agent_sockets s"
            " JOIN agents a ON a.id = s.agent_id"
            " WHERE s.replica_id <> $1 AND a.last_connected_at > $2",
            self.replica_id,
            fresh,
        )
        for row in rows:
            await self._coordinator.deliver_claim(
                str(row["agent_id"]), row["replica_id"], row["peer_id"], row["since"].timestamp()
            )

    def _on_notify(
        self,
        _conn: asyncpg.Connection | PoolConnectionProxy,
        _pid: int,
        channel: str,
        payload: object,
    ) -> None:
        cache = self._auth_cache
        # Cleared here, not in the worker: a request served meanwhile must not hit.
        if cache is not None and channel in (AUTH_CHANNEL, REVOKED_CHANNEL):
            cache.invalidate()
        if channel == AUTH_CHANNEL:
            return
        text = str(payload)
        if self._inbox_bytes + len(text) > INBOX_BYTES:
            log.warning("bus.inbox_full", channel=channel, queued_bytes=self._inbox_bytes)
            return
        try:
            self._inbox.put_nowait((channel, text))
        except asyncio.QueueFull:
            log.warning("bus.inbox_full", channel=channel)
            return
        self._inbox_bytes += len(text)

    async def _work(self) -> None:
        while True:
            expiry = self._chunks.next_expiry()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel that
                # races with the item's arrival, and close() would wait for ever.
                async with asyncio.timeout(None if expiry is None else expiry - time.monotonic()):
                    channel, payload = await self._inbox.get()
                self._inbox_bytes -= len(payload)
            except TimeoutError:
                self._chunks.expire()
                self._log_dropped()
                continue
            try:
                if is_chunk(payload):
                    whole = self._reassemble(payload)
                    if whole is None:
                        continue
                    payload = whole
                await self._handle(channel, payload)
            except Exception:
                log.exception("bus.message_failed", channel=channel)

    def _reassemble(self, payload: str) -> str | None:
        if payload.startswith(f"#{self._tag}-"):
            return None  # a chunk of our own broadcast
        try:
            whole = self._chunks.feed(payload)
        except ChunkError as exc:
            log.warning("bus.chunk_refused", error=str(exc))
            whole = None
        self._chunks.expire()
        self._log_dropped()
        return whole

    def _log_dropped(self) -> None:
        for dropped in self._chunks.dropped:
            log.warning(
                "bus.chunks_dropped",
                message_id=dropped.message_id,
                reason=dropped.reason,
                received=dropped.received,
                count=dropped.count,
            )
        self._chunks.dropped.clear()

    async def _handle(self, channel: str, payload: str) -> None:
        if channel == GITAUTH_CHANNEL:
            provider, _, user = payload.partition("\n")
            self._gitauth.notify(provider, user)
            return
        if channel == REVOKED_CHANNEL:
            self._coordinator.recheck(payload)
            return
        if channel == LOGS_CHANNEL:
            if self._logs_appended is not None:
                self._logs_appended(payload)
            return
        message = json.loads(payload)
        if message.get("from") == self.replica_id:
            return  # our own broadcast
        agent = str(message.get("agent", ""))
        if not self._lanes.put(agent, message, len(payload)):
            log.warning("bus.lane_full", agent_id=agent[:64], kind=str(message.get("t"))[:32])

    async def _deliver(self, message: dict[str, Any]) -> None:
        """One message for one agent, in that agent's lane (``controlplane.buslanes``)."""
        kind, agent = message.get("t"), str(message.get("agent", ""))
        coordinator = self._coordinator
        match kind:
            case "claim":
                await coordinator.deliver_claim(
                    agent, str(message["from"]), str(message["peer"]), float(message["since"])
                )
            case "release":
                coordinator.deliver_release(agent, str(message["peer"]))
            case "node":
                await coordinator.deliver_agent_node(agent, message["node"])
            case "to_agent":
                await coordinator.deliver_to_agent(agent, message["payload"], str(message["from"]))
            case "from_agent":
                await coordinator.deliver_from_agent(agent, message["value"])
            case "want_node":
                await coordinator.deliver_want_node(agent)
