"""Open ``/workspaceagents/{id}/stream`` and splice it with a local byte stream.

The wire form is docs/protocol.md "Byte streams": binary messages are bytes, an empty
message is end-of-file in that direction, and the close frame ends the stream. Every
refusal comes as an HTTP status with Coder's error body before the upgrade, so it maps to
one line here (unknown agent, agent offline, forbidden, port closed in the workspace).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from wsagent.remote.session import CliError, Credentials

CHUNK: Final = 256 * 1024
OPEN_TIMEOUT: Final = 20.0
STALL_TIMEOUT: Final = 30.0
MAX_MESSAGE: Final = 1 << 20
SEND_BUFFER: Final = 1 << 20


def stream_url(base: str, agent_id: str, target: str) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + f"/api/v2/workspaceagents/{agent_id}/stream"
    return urlunsplit((scheme, parts.netloc, path, urlencode({"target": target}), ""))


def refusal(status: int, body: bytes, target: str) -> str:
    """One line for a refused upgrade."""
    try:
        value = json.loads(body)
    except ValueError:
        value = {}
    message = str(value.get("message", "")) if isinstance(value, dict) else ""
    detail = str(value.get("detail", "")) if isinstance(value, dict) else ""
    if status == 401:
        return f"not authorized: {message or 'invalid session token'}; run wsagent login"
    if status == 404:
        return "forbidden or unknown agent: it is not one of your workspaces' agents"
    if status == 400 and message.startswith("Agent state"):
        return f"agent offline: {message}"
    if status == 502 and message.startswith("Failed to connect"):
        return detail or message
    text = f"{message} ({detail})" if detail else message
    return f"cannot open {target}: {text or f'status {status}'}"


async def open_stream(
    credentials: Credentials, agent_id: str, target: str, verify: ssl.SSLContext | bool = True
) -> ClientConnection:
    url = stream_url(credentials.url, agent_id, target)
    context: ssl.SSLContext | None = None
    if url.startswith("wss://"):
        context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
    try:
        return await connect(
            url,
            additional_headers={"Coder-Session-Token": credentials.token},
            ssl=context,
            compression=None,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=2,
            max_size=MAX_MESSAGE,
            max_queue=4,
            # Sends wait only above this, so reading and sending overlap (see the agent).
            write_limit=SEND_BUFFER,
            user_agent_header="wsagent",
        )
    except InvalidStatus as exc:
        response = exc.response
        raise CliError(refusal(response.status_code, bytes(response.body or b""), target)) from exc
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        raise CliError(f"cannot reach {credentials.url}: {exc or type(exc).__name__}") from exc


async def splice(
    ws: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> str:
    """Copy bytes both ways until both directions reached end-of-file or either side
    closed. Returns "" after a clean end, else why the stream broke."""

    async def up() -> None:  # local -> workspace
        while data := await reader.read(CHUNK):
            async with asyncio.timeout(STALL_TIMEOUT):  # no task per message, unlike wait_for
                await ws.send(data)
        async with asyncio.timeout(STALL_TIMEOUT):
            await ws.send(b"")

    async def down() -> None:  # workspace -> local
        async for message in ws:
            data = message if isinstance(message, bytes) else message.encode()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
        raise _Closed

    tasks = {asyncio.create_task(up()), asyncio.create_task(down())}
    try:
        while tasks:
            done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    continue
                if isinstance(exc, _Closed | ConnectionClosed):
                    return _close_reason(ws)
                if isinstance(exc, TimeoutError):
                    return f"the workspace did not read for {STALL_TIMEOUT:g}s"
                if isinstance(exc, OSError):
                    return f"local connection failed: {exc}"
                raise exc
        return ""
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Closed(Exception):
    pass


def _close_reason(ws: ClientConnection) -> str:
    """ "" for a normal close, else the reason (the agent or server died, the stream stalled)."""
    rcvd = ws.protocol.close_rcvd
    if rcvd is not None and rcvd.code == 1000:
        return ""
    if rcvd is None:
        return "connection to the workspace lost"
    return f"stream closed: {rcvd.reason or f'code {rcvd.code}'}"
