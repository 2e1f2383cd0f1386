"""Streamed startup logs: the agent appends (``PATCH /me/startup-logs``), the owner reads
(``GET /workspaceagents/{id}/startup-logs[?after=N][&follow]``).

Each agent keeps at most 1 MiB of output, as in Coder; the line that would pass it sets
``startup_logs_overflowed`` and the answer is 413, as is every later append. A follower
is told of new lines in-process (this replica's appends) and re-checks the store every
few seconds, which also covers lines appended through another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC
from typing import Final

import structlog
from aiohttp import WSMsgType, web

from agent.sdk.startuplogs import (
    LOG_LEVELS,
    MAX_STARTUP_LOGS_BYTES,
    SEQ_HEADER,
    STREAM_HEADER,
    PatchStartupLogs,
    WorkspaceAgentStartupLog,
)
from controlplane.appkeys import STORE
from controlplane.auth import authenticate_agent, authenticate_user, owned_agent
from controlplane.httpapi import HTTPError, decode_body, encode, read_json, respond
from controlplane.routes_shared import parse_agent_id
from controlplane.store.base import Store
from controlplane.store.records import NewStartupLog, StartupLogRecord

log = structlog.get_logger()

RECHECK_INTERVAL: Final = 5.0
# Lines per follow message; a reader far behind gets several messages.
FOLLOW_BATCH: Final = 5000
_STREAM_ID: Final = re.compile(r"[0-9A-Za-z-]{1,64}")


class LogNotifier:
    """Wakes the followers of an agent's logs; closes every follow socket at shutdown."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self.sockets: set[web.WebSocketResponse] = set()

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

    def publish(self, agent_id: str) -> None:
        for event in self._waiters.get(agent_id, ()):
            event.set()

    async def close(self) -> None:
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")


NOTIFIER: web.AppKey[LogNotifier] = web.AppKey("startup_logs_notifier")


def log_model(record: StartupLogRecord) -> WorkspaceAgentStartupLog:
    return WorkspaceAgentStartupLog(record.id, record.created_at, record.output, record.level)


def _dedup_headers(request: web.Request) -> tuple[str, int]:
    stream = request.headers.get(STREAM_HEADER, "")
    if not stream:
        return "", 0
    raw_seq = request.headers.get(SEQ_HEADER, "")
    if not _STREAM_ID.fullmatch(stream) or not raw_seq.isdigit() or len(raw_seq) > 18:
        raise HTTPError(
            400,
            "Invalid log stream headers.",
            f"{STREAM_HEADER} must be 1-64 of [0-9A-Za-z-] and {SEQ_HEADER} a non-negative"
            " integer.",
        )
    return stream, int(raw_seq)


async def patch_startup_logs(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    stream, first_seq = _dedup_headers(request)
    body = decode_body(
        PatchStartupLogs.from_json, await read_json(request), "PATCH /me/startup-logs"
    )
    if not body.logs:
        raise HTTPError(400, "No logs provided.")
    for line in body.logs:
        if line.level not in LOG_LEVELS:
            raise HTTPError(
                400, "Invalid log level provided.", f'invalid log level: "{line.level[:32]}"'
            )
    result = await request.app[STORE].append_startup_logs(
        agent.id,
        [NewStartupLog(ln.created_at.astimezone(UTC), ln.output, ln.level) for ln in body.logs],
        cap_bytes=MAX_STARTUP_LOGS_BYTES,
        stream=stream,
        first_seq=first_seq,
    )
    if result.stored:
        request.app[NOTIFIER].publish(agent.id)
    if result.overflowed:
        if result.newly:
            log.info("agent.startup_logs_overflowed", agent_id=agent.id)
        raise HTTPError(
            413,
            "Startup logs limit exceeded",
            f"The agent's startup logs reached the limit of {MAX_STARTUP_LOGS_BYTES} bytes.",
        )
    return respond(None)


def _id_param(request: web.Request, name: str) -> int:
    raw = request.query.get(name, "")
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 18:
        raise HTTPError(
            400,
            f'Query param "{name}" must be an integer greater than or equal to zero.',
            validations=[(name, "Must be an integer greater than or equal to zero")],
        )
    return int(raw)


async def get_startup_logs(request: web.Request) -> web.StreamResponse:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    after = _id_param(request, "after")
    before = _id_param(request, "before")
    store = request.app[STORE]
    if "follow" not in request.query:  # a presence flag, as in Coder
        records = await store.list_startup_logs(agent.id, after=after, before=before)
        return respond([log_model(r).to_json() for r in records])
    notifier = request.app[NOTIFIER]
    wake = notifier.subscribe(agent.id)  # before the first read: no line slips between
    ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=4096, compress=False)
    try:
        await ws.prepare(request)
        notifier.sockets.add(ws)
        reader = asyncio.create_task(_drain(ws))
        try:
            await _follow(ws, store, agent.id, after, wake, reader)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        notifier.sockets.discard(ws)
        notifier.unsubscribe(agent.id, wake)
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends, so its close frame and pongs are seen."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            return


async def _follow(
    ws: web.WebSocketResponse,
    store: Store,
    agent_id: str,
    after: int,
    wake: asyncio.Event,
    reader: asyncio.Task[None],
) -> None:
    last = after
    first = True
    while not ws.closed and not reader.done():
        wake.clear()
        records = await store.list_startup_logs(agent_id, after=last, limit=FOLLOW_BATCH)
        if records or first:
            # Go's encoder ends each value with a newline; each message is one array.
            await ws.send_str(encode([log_model(r).to_json() for r in records]).decode())
            first = False
        if records:
            last = records[-1].id
            if len(records) == FOLLOW_BATCH:
                continue
        waiter = asyncio.create_task(wake.wait())
        done, _ = await asyncio.wait(
            {waiter, reader}, timeout=RECHECK_INTERVAL, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        if reader in done:
            return


def setup(app: web.Application) -> None:
    app[NOTIFIER] = LogNotifier()

    async def close_followers(app: web.Application) -> None:
        await app[NOTIFIER].close()

    app.on_shutdown.append(close_followers)
    app.router.add_patch("/api/v2/workspaceagents/me/startup-logs", patch_startup_logs)
    app.router.add_get("/api/v2/workspaceagents/{agent_id}/startup-logs", get_startup_logs)
