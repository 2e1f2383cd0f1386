"""App health end to end: the real daemon probes a real HTTP app on loopback and the real
control plane stores what it reports (GET /api/v2/workspaceagents/{id} apps[].health)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ControlPlane, poll_until
from tests.e2e.daemon.conftest import SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e


class App:
    """A workspace app with a health endpoint whose status the test switches."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0  # seconds before answering (a slow app)
        self.hits: list[float] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.Response:
        self.hits.append(time.monotonic())
        if self.delay:
            await asyncio.sleep(self.delay)  # the app under test is slow on purpose
        return web.Response(status=self.status, text="ok" if self.status < 500 else "down")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def web_app() -> AsyncIterator[App]:
    app = App()
    await app.start()
    yield app
    await app.stop()


async def healths(cp: ControlPlane, agent_id: str, token: str) -> dict[str, str]:
    body: dict[str, Any] = await cp.get_agent_json(agent_id, token)
    return {a["slug"]: a["health"] for a in body["apps"]}


async def test_health_is_probed_reported_and_stored(
    control_plane: ControlPlane, spawn_daemon: SpawnDaemon, web_app: App
) -> None:
    """healthy and unhealthy (500, and slower than the interval) land in the store; the
    disabled app stays disabled; an app that starts failing turns unhealthy; at interval 1
    there are at most 2 probes a second."""
    broken = App()
    broken.status = 500
    await broken.start()
    slow = App()
    slow.delay = 1.5  # over the 1 s interval, which is also the probe timeout
    await slow.start()
    try:
        _, user_token = await control_plane.create_user("alice")
        check = {"interval": 1, "threshold": 1}
        agents = await control_plane.create_workspace(
            "alice",
            "dev",
            [
                {
                    "name": "main",
                    "apps": [
                        {
                            "slug": "web",
                            "url": "http://127.0.0.1:1",
                            "healthcheck": {"url": web_app.url, **check},
                        },
                        {
                            "slug": "api",
                            "url": "http://127.0.0.1:2",
                            "healthcheck": {"url": broken.url, **check},
                        },
                        {"slug": "docs", "url": "http://127.0.0.1:3"},
                        {
                            "slug": "slow",
                            "url": "http://127.0.0.1:4",
                            "healthcheck": {"url": slow.url, **check},
                        },
                    ],
                }
            ],
        )
        agent_id, agent_token = agents["main"]
        assert await healths(control_plane, agent_id, user_token) == {
            "web": "initializing",
            "api": "initializing",
            "docs": "disabled",
            "slow": "initializing",
        }
        daemon = await spawn_daemon(control_plane.url, agent_token)

        async def stored() -> dict[str, str]:
            return await healths(control_plane, agent_id, user_token)

        expected = {"web": "healthy", "api": "unhealthy", "docs": "disabled", "slow": "unhealthy"}
        await poll_until(
            lambda: _is(stored, expected),
            timeout=10,
            message="healthy/unhealthy never stored",
        )

        # Rate: count the probes of one app over a 2 s window.
        start = time.monotonic()
        before = len(web_app.hits)
        await asyncio.sleep(2.0)  # the rate itself is what is measured, so this is on the clock
        probes = len(web_app.hits) - before
        assert 1 <= probes <= 2 * (time.monotonic() - start), probes

        web_app.status = 503
        await poll_until(lambda: _is(stored, {"web": "unhealthy"}), timeout=10)
        web_app.status = 404  # any answer below 500 is healthy
        await poll_until(lambda: _is(stored, {"web": "healthy"}), timeout=10)
        assert daemon.proc.returncode is None
    finally:
        await broken.stop()
        await slow.stop()


async def _is(stored: Any, expected: dict[str, str]) -> bool:
    now = await stored()
    return all(now.get(k) == v for k, v in expected.items())


def fake_app(app_id: str, slug: str, url: str) -> dict[str, Any]:
    return {
        "id": app_id,
        "url": "http://127.0.0.1:1",
        "external": False,
        "slug": slug,
        "display_name": slug,
        "subdomain": False,
        "sharing_level": "owner",
        "healthcheck": {"url": url, "interval": 1, "threshold": 1},
        "health": "initializing",
    }


async def test_probers_follow_metadata_and_the_map_is_reposted_after_a_reconnect(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str, web_app: App
) -> None:
    """Each attempt's metadata updates the probers: an added app is probed and reported
    (the whole map, under the ``Healths`` key); a removed one is no longer probed. After a
    reconnect the current map is posted again even though nothing changed."""
    broken = App()
    broken.status = 500
    await broken.start()
    try:
        a = fake_app("00000000-0000-4000-8000-00000000000a", "a", web_app.url)
        b = fake_app("00000000-0000-4000-8000-00000000000b", "b", broken.url)
        fake_cp.apps = [a]
        await spawn_daemon(fake_cp.url, agent_token)

        def posted() -> list[dict[str, str]]:
            return [r.body["Healths"] for r in fake_cp.of("POST", "/me/app-health")]

        await fake_cp.wait_for(lambda: {a["id"]: "healthy"} in posted())
        await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)

        # Same apps, new connection: the unchanged map is posted again.
        count = len(posted())
        await fake_cp.drop_coordinate()
        await fake_cp.wait_for(lambda: len(posted()) > count, within=5)
        assert posted()[count] == {a["id"]: "healthy"}

        fake_cp.apps = [a, b]
        await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
        await fake_cp.drop_coordinate()
        await fake_cp.wait_for(
            lambda: {a["id"]: "healthy", b["id"]: "unhealthy"} in posted(), within=10
        )

        fake_cp.apps = [b]
        opens = len(fake_cp.coordinate_opens)
        await fake_cp.drop_coordinate()
        await fake_cp.wait_for(
            lambda: len(fake_cp.coordinate_opens) > opens and fake_cp.open_sockets == 1
        )
        await fake_cp.wait_for(lambda: posted()[-1] == {b["id"]: "unhealthy"}, within=5)
        hits = len(web_app.hits)
        await asyncio.sleep(2.0)  # an absence can only be seen over time
        assert len(web_app.hits) - hits <= 1  # at most one probe was already in flight
    finally:
        await broken.stop()


class FlakyHealthControlPlane(FakeControlPlane):
    """The fake control plane whose first ``failures`` app-health posts answer 500."""

    failures = 2

    async def _app_health(self, request: web.Request) -> web.StreamResponse:
        if self.failures:
            self.failures -= 1
            await self._record(request, "POST", await self._json_body(request))
            return web.json_response({"message": "db on fire"}, status=500)
        return await super()._app_health(request)


async def test_a_failed_health_post_is_retried_until_it_lands(
    spawn_daemon: SpawnDaemon, agent_token: str, web_app: App
) -> None:
    a = fake_app("00000000-0000-4000-8000-00000000000a", "a", web_app.url)
    async with FlakyHealthControlPlane(agent_token, apps=[a]) as cp:
        daemon = await spawn_daemon(cp.url, agent_token)
        await cp.wait_for(lambda: len(cp.of("POST", "/me/app-health")) == 3, within=10)
        assert all(
            r.body == {"Healths": {a["id"]: "healthy"}} for r in cp.of("POST", "/me/app-health")
        )
        assert cp.failures == 0
        # Two failures of one kind: logged once (throttled), not once per retry.
        assert len(daemon.named("apphealth.post_failed")) == 1


async def test_http_probe_statuses_deadline_and_refusal(unused_port_url: str) -> None:
    """Below 500 is healthy; 5xx, a reply slower than the limit (even one that keeps
    dripping bytes) and a refused connection are not."""
    from agent.apphealth import HttpProbe

    async def status(request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]))

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b".")
            await asyncio.sleep(0.05)
        return response

    async def slow_headers(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/drip", drip)
    app.router.add_get("/slow", slow_headers)
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    probe = HttpProbe()
    try:
        results = {
            code: await probe(f"{base}/status/{code}", 1.0) for code in (200, 302, 404, 500, 503)
        }
        assert results == {200: True, 302: True, 404: True, 500: False, 503: False}
        assert await probe(f"{base}/drip", 1.0) is True  # the status came in time; body ignored
        started = time.monotonic()
        assert await probe(f"{base}/slow", 0.3) is False
        assert time.monotonic() - started < 1.0
        assert await probe(unused_port_url, 1.0) is False
    finally:
        await probe.aclose()
        await runner.cleanup()
