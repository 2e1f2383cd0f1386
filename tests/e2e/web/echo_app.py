"""A small HTTP and WebSocket app, run on the workspace's loopback during the proxy tests:
its page opens a WebSocket back to it, ``/headers`` echoes the request headers, ``/ws``
echoes messages, ``/bytes?n=`` streams n bytes (``&length=1`` with a Content-Length,
``&cut=1`` dying half-way), ``/upload`` counts a streamed body."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import WSMsgType, web

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>echo app</title></head>
<body><h1>echo app</h1><p>path: <code id="path">{path}</code></p>
<p>websocket: <span id="echo">waiting</span></p>
<script>
const url = new URL("ws", window.location.href);
url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(url);
ws.onopen = () => ws.send("ping");
ws.onmessage = (e) => {{ document.getElementById("echo").textContent = e.data; }};
ws.onerror = () => {{ document.getElementById("echo").textContent = "error"; }};
</script></body></html>"""


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.format(path=request.path_qs), content_type="text/html")


async def headers(request: web.Request) -> web.Response:
    return web.json_response(
        {"headers": [[k, v] for k, v in request.headers.items()], "path": request.path_qs}
    )


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("echo.v1",))
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(f"echo:{msg.data}")
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def stream_bytes(request: web.Request) -> web.StreamResponse:
    total = int(request.query.get("n", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("length") == "1":
        response.content_length = total
    await response.prepare(request)
    block = b"x" * (256 * 1024)
    # cut=1: the app dies half-way through its body.
    end = total // 2 if request.query.get("cut") == "1" else total
    sent = 0
    while sent < end:
        chunk = block[: min(len(block), end - sent)]
        await response.write(chunk)
        sent += len(chunk)
    if end < total:
        assert request.transport is not None
        request.transport.close()
        return response
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    count = 0
    async for chunk in request.content.iter_chunked(65536):
        count += len(chunk)
    return web.json_response({"received": count})


def make_app() -> web.Application:
    app = web.Application()
    for prefix in ("", "/base"):  # served at / and at /base (an app URL with a path)
        app.router.add_get(f"{prefix}/headers", headers)
        app.router.add_get(f"{prefix}/ws", websocket)
        app.router.add_get(f"{prefix}/bytes", stream_bytes)
        app.router.add_post(f"{prefix}/upload", upload)
    app.router.add_get("/{tail:.*}", page)
    return app


@asynccontextmanager
async def running_echo_app() -> AsyncIterator[int]:
    """Serve the app on 127.0.0.1; yields its port."""
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()


def header_map(body: str) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


if __name__ == "__main__":
    # Run alone (the benchmarks): serve on 127.0.0.1, print the port, run until killed.
    import asyncio

    async def _main() -> None:
        async with running_echo_app() as port:
            print(port, flush=True)
            await asyncio.Event().wait()

    asyncio.run(_main())
