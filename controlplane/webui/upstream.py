"""HTTP/1.1 and WebSocket to an app inside the workspace, over one agent byte stream.

Each proxied request opens its own stream (``tcp:<port>`` on the workspace's loopback)
and sends ``Connection: close``, so a stream carries exactly one exchange. h11 (already
installed with httpx) frames the request and parses the response; bodies are streamed
both ways with each write awaited, so memory stays bounded whatever the size. WebSockets
are terminated here and re-framed towards the app with websockets' sans-I/O client, so
the browser's socket gets aiohttp's flow control and heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Final, Protocol

import h11
from aiohttp import WSMsgType, web
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidState
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response as WSResponse
from websockets.uri import parse_uri

from controlplane.httpapi import HTTPError
from controlplane.webui.security import PROXIED

HEAD_TIMEOUT: Final = 60.0  # for the app to send its response head
IDLE_TIMEOUT: Final = 600.0  # between two reads of a body or socket
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_WS_MESSAGE: Final = 16 << 20
CLOSE_GRACE: Final = 2.0
READ_AHEAD: Final = 4  # chunks (each at most one agent message, 64 KiB)
CHUNK: Final = 64 * 1024
# Hop-by-hop headers (RFC 9110 §7.6.1) and what the proxy sets itself.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class ByteStream(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


class UpstreamError(HTTPError):
    """The app answered with something that is not HTTP, or not in time."""


async def _read(stream: ByteStream, seconds: float) -> bytes:
    try:
        async with asyncio.timeout(seconds):  # unlike wait_for, no task for every read
            return await stream.read()
    except TimeoutError:
        raise UpstreamError(504, "The app did not answer in time.") from None


async def _request_body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def forward_http(
    request: web.Request, stream: ByteStream, path: str, headers: Iterable[tuple[str, str]]
) -> web.StreamResponse:
    """Send ``request`` (its body streamed) to the app as ``path`` with ``headers``; relay
    the app's response (its body streamed) to the browser."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    has_body = request.body_exists
    out = [(k, v) for k, v in headers]
    if has_body:
        out.append(("Transfer-Encoding", "chunked"))
    out.append(("Connection", "close"))
    try:
        await stream.write(conn.send(h11.Request(method=request.method, target=path, headers=out)))
        if has_body:
            async for chunk in _request_body(request):
                await stream.write(conn.send(h11.Data(data=chunk)))
        await stream.write(conn.send(h11.EndOfMessage()))
        head = await _response_head(conn, stream)
    except h11.ProtocolError as exc:
        raise UpstreamError(502, "The app sent an invalid HTTP response.", str(exc)) from None
    response = web.StreamResponse(status=head.status_code, reason=head.reason.decode("latin-1"))
    for raw_name, raw_value in head.headers:
        name = raw_name.decode("latin-1")
        if name.lower() in HOP_BY_HOP or name.lower() == "content-length":
            continue
        response.headers.add(name, raw_value.decode("latin-1"))
    response[PROXIED] = True  # the app's headers stand: no CSP of ours on its pages
    length = _content_length(head)
    if length is not None and request.method != "HEAD":
        response.content_length = length
    bodyless = request.method == "HEAD" or head.status_code in (204, 304)
    return await _relay_body(request, response, conn, stream, None if bodyless else length)


async def _response_head(conn: h11.Connection, stream: ByteStream) -> h11.Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_TIMEOUT
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await _read(stream, max(0.1, deadline - loop.time())))
            continue
        if isinstance(event, h11.InformationalResponse):
            continue  # 100 Continue and friends: the browser's request is already sent
        if isinstance(event, h11.Response):
            return event
        raise UpstreamError(502, "The app closed the connection without answering.")


def _content_length(head: h11.Response) -> int | None:
    for name, value in head.headers:
        if name.lower() == b"content-length":
            return int(value)
    return None


async def _relay_body(
    request: web.Request,
    response: web.StreamResponse,
    conn: h11.Connection,
    stream: ByteStream,
    length: int | None,
) -> web.StreamResponse:
    """Relay the response body; ``length`` is its Content-Length when it has a body of
    that length, else None (chunked, until close, or none at all: h11 frames those)."""
    await response.prepare(request)
    # Read ahead of the browser by a few chunks: while one chunk is being written (and the
    # browser's socket drained), the next is already coming from the agent.
    ahead: asyncio.Queue[bytes | BaseException] = asyncio.Queue(READ_AHEAD)
    reader = asyncio.create_task(_read_ahead(stream, ahead))
    try:
        if length is not None:
            await _relay_exact(response, conn, ahead, length)
        else:
            await _relay_framed(response, conn, ahead)
    except (h11.ProtocolError, UpstreamError):
        # The head is sent: all that is left is to cut the body short, which the browser
        # sees as a failed download rather than a complete one.
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    await response.write_eof()
    return response


async def _relay_exact(
    response: web.StreamResponse,
    conn: h11.Connection,
    ahead: asyncio.Queue[bytes | BaseException],
    length: int,
) -> None:
    """A body of known length: the stream's chunks go to the browser as they are. Passing
    them through h11 would copy each one three times (into its buffer, out of it, and
    into bytes) for framing a byte count already gives."""
    data, _ = conn.trailing_data  # what came with the head
    remaining = length
    while True:
        if data:
            piece = data if len(data) <= remaining else data[:remaining]
            remaining -= len(piece)
            await response.write(piece)
        if remaining <= 0:
            return
        item = await ahead.get()
        if isinstance(item, BaseException):
            raise item
        if not item:
            raise UpstreamError(502, "The app closed the connection in the middle of its body.")
        data = item


async def _relay_framed(
    response: web.StreamResponse, conn: h11.Connection, ahead: asyncio.Queue[bytes | BaseException]
) -> None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await ahead.get()
            if isinstance(data, BaseException):
                raise data
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Data):
            await response.write(bytes(event.data))
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


async def _read_ahead(stream: ByteStream, ahead: asyncio.Queue[bytes | BaseException]) -> None:
    while True:
        try:
            data = await _read(stream, IDLE_TIMEOUT)
        except (UpstreamError, ConnectionError, TimeoutError) as exc:
            await ahead.put(exc)
            return
        await ahead.put(data)
        if not data:
            return


# ---------------------------------------------------------------------------- WebSocket


async def forward_websocket(
    request: web.Request, stream: ByteStream, path: str, headers: Iterable[tuple[str, str]]
) -> web.StreamResponse:
    """Open the app's WebSocket over ``stream``, then accept the browser's with the same
    subprotocol and relay messages until either side closes."""
    offered = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    client = ClientProtocol(
        parse_uri(f"ws://app{path}"),
        subprotocols=offered or None,  # type: ignore[arg-type]
        max_size=MAX_WS_MESSAGE,
    )
    handshake = client.connect()
    for name in ("Host",):
        del handshake.headers[name]
    for name, value in headers:
        if name.lower() not in ("sec-websocket-protocol", "sec-websocket-extensions"):
            handshake.headers[name] = value
    client.send_request(handshake)
    await _flush(client, stream)
    reply = await _handshake_reply(client, stream)
    if reply.status_code != 101 or client.handshake_exc is not None:
        raise UpstreamError(
            502,
            "The app refused the WebSocket.",
            f"status {reply.status_code}: {client.handshake_exc or reply.reason_phrase}",
        )
    chosen = reply.headers.get("Sec-WebSocket-Protocol")
    browser = web.WebSocketResponse(
        protocols=(chosen,) if chosen else (),
        heartbeat=15.0,
        max_msg_size=MAX_WS_MESSAGE,
        compress=False,
    )
    await browser.prepare(request)
    to_app = asyncio.create_task(_browser_to_app(browser, client, stream))
    to_browser = asyncio.create_task(_app_to_browser(client, stream, browser))
    try:
        done, _ = await asyncio.wait({to_app, to_browser}, return_when=asyncio.FIRST_COMPLETED)
        if to_app in done:
            # The browser left: give the app a moment to answer the close, then stop.
            await asyncio.wait({to_browser}, timeout=CLOSE_GRACE)
    finally:
        for task in (to_app, to_browser):
            task.cancel()
        await asyncio.gather(to_app, to_browser, return_exceptions=True)
        with contextlib.suppress(Exception):
            await browser.close()
    return browser


async def _flush(client: ClientProtocol, stream: ByteStream) -> None:
    for data in client.data_to_send():
        if data:
            await stream.write(data)


async def _handshake_reply(client: ClientProtocol, stream: ByteStream) -> WSResponse:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_TIMEOUT
    while True:
        for event in client.events_received():
            if isinstance(event, WSResponse):
                return event
        data = await _read(stream, max(0.1, deadline - loop.time()))
        if not data:
            raise UpstreamError(
                502, "The app closed the connection during the WebSocket handshake."
            )
        client.receive_data(data)


async def _browser_to_app(
    browser: web.WebSocketResponse, client: ClientProtocol, stream: ByteStream
) -> None:
    async for msg in browser:
        try:
            if msg.type == WSMsgType.TEXT:
                client.send_text(str(msg.data).encode())
            elif msg.type == WSMsgType.BINARY:
                client.send_binary(bytes(msg.data))
            else:
                continue
        except InvalidState:
            return
        await _flush(client, stream)
    with contextlib.suppress(InvalidState, InvalidHandshake):
        client.send_close(browser.close_code or 1000)
        await _flush(client, stream)


async def _app_to_browser(
    client: ClientProtocol, stream: ByteStream, browser: web.WebSocketResponse
) -> None:
    parts: list[bytes] = []
    text = False
    while not browser.closed:
        data = await _read(stream, IDLE_TIMEOUT)
        if not data:
            client.receive_eof()
        else:
            client.receive_data(data)
        for event in client.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                text = event.opcode is Opcode.TEXT
                parts = [bytes(event.data)]
            elif event.opcode is Opcode.CONT:
                parts.append(bytes(event.data))
            elif event.opcode is Opcode.CLOSE:
                close = Close.parse(bytes(event.data)) if event.data else None
                await browser.close(
                    code=close.code if close else 1000,
                    message=(close.reason if close else "").encode()[:123],
                )
                return
            else:
                continue
            if event.fin:
                message = b"".join(parts)
                parts = []
                if text:
                    await browser.send_str(message.decode("utf-8", "replace"))
                else:
                    await browser.send_bytes(message)
        await _flush(client, stream)  # pongs and the closing handshake
        if not data:
            return
