"""A small, configurable control plane on 127.0.0.1 for fault injection.

It speaks just enough of the agent API (metadata, startup, report-stats, report-lifecycle,
app-health, coordinate) for the daemon tests, records every request, and can be switched
into failure modes the real control plane cannot produce: 500s, malformed JSON, wrong
types, refused or dropped coordinate sockets, and being down for a while (``down()`` then
``up()`` on the same port). Bodies are written by hand, as a server would send them, so
the agent's decoders are tested against independent JSON, not against their own encoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from aiohttp import WSMsgType, web

MetadataMode = Literal["ok", "500", "malformed", "wrong_types", "slow"]
CoordinateMode = Literal["ok", "refuse", "drop_at_once", "deaf"]

API = "/api/v2/workspaceagents"
DEFAULT_INTERVAL_NS = 600 * 1_000_000_000


@dataclass
class Recorded:
    """One request (or coordinate socket event) as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    cookies: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


class FakeControlPlane:
    def __init__(
        self,
        token: str,
        *,
        directory: str = "~",
        apps: list[dict[str, Any]] | None = None,
        report_interval_ns: int = DEFAULT_INTERVAL_NS,
    ) -> None:
        self.token = token
        self.directory = directory
        self.apps = apps or []
        self.report_interval_ns = report_interval_ns
        self.startup_script = ""
        self.metadata_mode: MetadataMode = "ok"
        self.coordinate_mode: CoordinateMode = "ok"
        self.requests: list[Recorded] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        """Listen (again) on the same port as before, or on a free one the first time."""
        app = web.Application()
        app.router.add_get(f"{API}/me/metadata", self._metadata)
        app.router.add_post(f"{API}/me/startup", self._startup)
        app.router.add_post(f"{API}/me/report-stats", self._stats)
        app.router.add_post(f"{API}/me/report-lifecycle", self._lifecycle)
        app.router.add_post(f"{API}/me/app-health", self._app_health)
        app.router.add_get(f"{API}/me/coordinate", self._coordinate)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self._site = site
        if self.port == 0:
            server = site._server  # the only way aiohttp exposes the bound socket
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening and close every socket, like a crashed or restarting server."""
        # Stop accepting first: a connection the agent opens while the others are being
        # closed would otherwise slip in and be left behind by the cleanup.
        if self._site is not None:
            await self._site.stop()
            self._site = None
        await self.drop_coordinate()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drop_coordinate(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1011, message=b"test dropped the socket")

    async def __aenter__(self) -> Self:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    # ------------------------------------------------------------ observation

    def of(self, method: str, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    @property
    def startups(self) -> list[Recorded]:
        return self.of("POST", "/me/startup")

    @property
    def metadata_requests(self) -> list[Recorded]:
        return self.of("GET", "/me/metadata")

    @property
    def coordinate_opens(self) -> list[Recorded]:
        return self.of("WS-OPEN", "/me/coordinate")

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> float:
        """Wait until ``predicate()`` holds; return the monotonic time it first did."""
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(predicate)
        return time.monotonic()

    async def _record(self, request: web.Request, method: str, body: Any) -> None:
        self.requests.append(
            Recorded(method, request.path, dict(request.headers), dict(request.cookies), body)
        )
        async with self._changed:
            self._changed.notify_all()

    async def _json_body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def _authorized(self, request: web.Request, *, cookie: bool = False) -> bool:
        if cookie:
            return request.cookies.get("coder_session_token") == self.token
        return request.headers.get("Coder-Session-Token") == self.token

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"message": "Workspace agent not authorized."}, status=401)

    # ------------------------------------------------------------ handlers

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, "GET", None)
        if not self._authorized(request):
            return self._unauthorized()
        mode = self.metadata_mode
        if mode == "500":
            return web.json_response(
                # A careless server echoing the credential: the agent must still never log it.
                {
                    "message": "Internal error fetching metadata.",
                    "detail": f"lookup of agent token {self.token} failed: db on fire",
                },
                status=500,
            )
        if mode == "malformed":
            return web.Response(
                body=b'{"apps": [', content_type="application/json", charset="utf-8"
            )
        if mode == "wrong_types":
            body = self.metadata_body()
            body["apps"] = "not a list"
            body["startup_script_timeout"] = "ten seconds"
            return web.json_response(body)
        if mode == "slow":
            await asyncio.sleep(3600)
        return web.json_response(self.metadata_body())

    def metadata_body(self) -> dict[str, Any]:
        return {
            "git_auth_configs": 0,
            "vscode_port_proxy_uri": "",
            "apps": self.apps,
            "derpmap": {
                "Regions": {
                    "999": {
                        "EmbeddedRelay": True,
                        "RegionID": 999,
                        "RegionCode": "coder",
                        "RegionName": "Coder",
                        "Nodes": [{"Name": "999a", "RegionID": 999, "HostName": "127.0.0.1"}],
                    }
                }
            },
            "environment_variables": None,
            "startup_script": self.startup_script,
            "startup_script_timeout": 0,
            "directory": self.directory,
            "motd_file": "",
        }

    async def _startup(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        await self._record(request, "POST", body)
        if not self._authorized(request):
            return self._unauthorized()
        version = body.get("version", "") if isinstance(body, dict) else ""
        if not (isinstance(version, str) and version.startswith("v")):
            return web.json_response(
                {"message": "Invalid workspace agent version provided."}, status=400
            )
        return web.json_response(None)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, "POST", await self._json_body(request))
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({"report_interval": self.report_interval_ns})

    async def _lifecycle(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, "POST", await self._json_body(request))
        if not self._authorized(request):
            return self._unauthorized()
        return web.Response(status=204)

    async def _app_health(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, "POST", await self._json_body(request))
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response(None)

    async def _coordinate(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, "WS-OPEN", None)
        if not self._authorized(request, cookie=True):
            return web.json_response(
                {"message": 'Cookie "coder_session_token" must be provided.'}, status=401
            )
        if self.coordinate_mode == "refuse":
            return web.json_response({"message": "Internal error fetching workspace."}, status=500)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.coordinate_mode == "drop_at_once":
            await ws.close(code=1011, message=b"dropped at once")
            await self._record(request, "WS-CLOSE", ws.close_code)
            return ws
        self._sockets.add(ws)
        if self.coordinate_mode == "deaf":
            # Never read, so a close frame from the agent is never answered.
            try:
                await asyncio.sleep(3600)
            finally:
                self._sockets.discard(ws)
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    data = message.data
                    text = data.decode() if isinstance(data, bytes) else data
                    with contextlib.suppress(ValueError):
                        await self._record(request, "WS-MESSAGE", json.loads(text))
        finally:
            self._sockets.discard(ws)
            await self._record(request, "WS-CLOSE", ws.close_code)
        return ws

    async def send_to_agents(self, value: Any) -> None:
        """Send one JSON value (binary frame) on every open coordinate socket."""
        await self.send_raw_to_agents(json.dumps(value).encode())

    async def send_raw_to_agents(self, data: bytes) -> None:
        for ws in list(self._sockets):
            await ws.send_bytes(data)
