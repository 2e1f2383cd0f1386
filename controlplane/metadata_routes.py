"""Agent metadata: the agent posts each key's result (``POST /me/metadata/{key}``), users
watch them (``GET /workspaceagents/{id}/watch-metadata``, server-sent events)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Final

from aiohttp import web

from agent.sdk.agentmetadata import MAX_ERROR_BYTES, MAX_VALUE_BYTES, MetadataResult
from controlplane.appkeys import STORE
from controlplane.auth import authenticate_agent, authenticate_user, owned_agent
from controlplane.httpapi import HTTPError, decode_body, encode, read_json, respond
from controlplane.metadatabatch import METADATA, MetadataBatcher, current_metadata
from controlplane.routes_shared import parse_agent_id
from controlplane.store.records import MetadataRecord

# The watch stream sends a change at most once a second, and the whole list every 5 s
# anyway so each result's "age" stays right (as Coder's does).
SEND_INTERVAL: Final = 1.0
REFRESH_INTERVAL: Final = 5.0


def _cut(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


async def post_metadata(request: web.Request) -> web.Response:
    agent = await authenticate_agent(request)
    key = request.match_info["key"]
    if not any(m.key == key for m in agent.spec.metadata):
        # Coder answers 204 and stores nothing; saying so helps whoever wrote the template.
        raise HTTPError(
            404, "Unknown metadata key.", f'The agent\'s template defines no key "{key[:128]}".'
        )
    body = decode_body(
        MetadataResult.from_json, await read_json(request), "POST /me/metadata/{key}"
    )
    value, error = body.value, body.error
    # Coder's limits: 2048 bytes each; a longer one is cut and the error says so.
    value_bytes, error_bytes = len(value.encode("utf-8")), len(error.encode("utf-8"))
    if value_bytes > MAX_VALUE_BYTES:
        error = f"value of {value_bytes} bytes exceeded {MAX_VALUE_BYTES} bytes"
        value = _cut(value, MAX_VALUE_BYTES)
    if error_bytes > MAX_ERROR_BYTES:
        error = f"error of {error_bytes} bytes exceeded {MAX_ERROR_BYTES} bytes"
    # The agent's clock may be off: its "age" places the collection on the server's clock.
    collected_at = datetime.now(UTC) - timedelta(seconds=min(body.age, 86400))
    request.app[METADATA].put(MetadataRecord(agent.id, key, value, error, collected_at))
    return respond(None, 204)


async def watch_metadata(request: web.Request) -> web.StreamResponse:
    user = await authenticate_user(request)
    agent, _ = await owned_agent(request, user, parse_agent_id(request))
    batcher = request.app[METADATA]
    changed = batcher.subscribe(agent.id)  # before the first read: no change slips between
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    try:
        await response.prepare(request)
        await _stream(request, response, batcher, changed, agent.id)
    except (ConnectionResetError, ConnectionError):
        pass  # the watcher went away
    finally:
        batcher.unsubscribe(agent.id, changed)
    return response


async def _stream(
    request: web.Request,
    response: web.StreamResponse,
    batcher: MetadataBatcher,
    changed: asyncio.Event,
    agent_id: str,
) -> None:
    loop = asyncio.get_running_loop()
    while not batcher.closing.is_set():
        agent = await request.app[STORE].get_agent(agent_id)
        if agent is None:
            return
        changed.clear()
        items = [m.to_json() for m in await current_metadata(request.app, agent)]
        await response.write(b"event: data\ndata: " + encode(items) + b"\n")
        sent = loop.time()
        # The next message: on a change (no sooner than SEND_INTERVAL after this one), or
        # after REFRESH_INTERVAL anyway with the ages updated.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(changed, batcher.closing), REFRESH_INTERVAL)
        if batcher.closing.is_set():
            return
        await asyncio.sleep(max(0.0, SEND_INTERVAL - (loop.time() - sent)))


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def setup(app: web.Application) -> None:
    batcher = MetadataBatcher(app[STORE])
    app[METADATA] = batcher

    async def close(app: web.Application) -> None:
        await app[METADATA].close()

    app.on_shutdown.append(close)
    app.router.add_post("/api/v2/workspaceagents/me/metadata/{key}", post_metadata)
    app.router.add_get("/api/v2/workspaceagents/{agent_id}/watch-metadata", watch_metadata)
