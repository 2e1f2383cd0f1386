"""App health: probe each app's health-check URL and report the whole map on change.

Reference §5.4. Apps whose health is ``disabled`` are ignored; one prober runs per app with
a URL, a positive interval and a positive threshold. The first probe comes one interval
after start, and each probe times out after the interval. Any answer below 500 is healthy.
An app turns unhealthy on the (threshold+1)-th consecutive failure; one success makes it
healthy again. Every second the map is compared with the last one reported and, on any
change, posted whole as ``{"Healths": {...}}``.

One fix over Coder: a failed post is retried on the next tick instead of being dropped
until the next change (issue 7).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx
import structlog

from agent.errors import WsagentError
from agent.logs import FailureThrottle, error_key
from agent.sdk.models import WorkspaceApp

log = structlog.get_logger()

HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"
DISABLED: Final = "disabled"
REPORT_EVERY: Final = 1.0

PostHealths = Callable[[dict[str, str]], Awaitable[None]]
# probe(url, limit) -> True when the app answered below 500 within limit seconds.
Probe = Callable[[str, float], Awaitable[bool]]
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass
class HealthCounter:
    """Consecutive-failure counter of one app. Pure: the caller passes ``now``."""

    threshold: int
    health: str = "initializing"
    failures: int = 0
    changed_at: float = field(default=0.0)

    def observe(self, ok: bool, now: float) -> str | None:
        """Record a probe result; return the new health if it changed, else None."""
        if ok:
            self.failures = 0
            new = HEALTHY
        elif self.failures < self.threshold:
            self.failures += 1
            return None
        else:
            new = UNHEALTHY
        if new == self.health:
            return None
        self.health = new
        self.changed_at = now
        return new


def probed_apps(apps: Sequence[WorkspaceApp]) -> list[WorkspaceApp]:
    """The apps that get a prober (Coder's conditions)."""
    return [
        app
        for app in apps
        if app.health != DISABLED
        and app.healthcheck.url
        and app.healthcheck.interval > 0
        and app.healthcheck.threshold > 0
    ]


class HttpProbe:
    """GET a URL; healthy when it answers below 500 within the timeout."""

    def __init__(self) -> None:
        # No proxies from the environment (apps are local) and no redirects: Coder's
        # prober takes any answer below 500, a 3xx included.
        self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False)

    async def __call__(self, url: str, limit: float) -> bool:
        # One deadline for the whole probe (httpx's bounds each read), and the body is
        # never read: only the status counts, however much the app sends.
        try:
            async with (
                asyncio.timeout(limit),
                self._client.stream("GET", url, timeout=limit) as response,
            ):
                return response.status_code < 500
        except Exception:  # no answer, whatever the reason, is "unhealthy"
            return False

    async def aclose(self) -> None:
        await self._client.aclose()


class AppHealthReporter:
    """Probes the apps of one metadata snapshot and reports their health until cancelled."""

    def __init__(
        self,
        apps: Sequence[WorkspaceApp],
        post: PostHealths,
        *,
        probe: Probe | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        report_every: float = REPORT_EVERY,
    ) -> None:
        tracked = [app for app in apps if app.health != DISABLED]
        # The map starts with the server's values, so nothing is posted until a change.
        self.healths: dict[str, str] = {app.id: app.health for app in tracked}
        self._reported = dict(self.healths)
        self._apps = probed_apps(tracked)
        self._post = post
        self._probe = probe
        self._sleep = sleep
        self._clock = clock
        self._report_every = report_every
        self._throttle = FailureThrottle()

    async def run(self) -> None:
        if not self._apps:
            return
        log.info("apphealth.started", apps=len(self._apps))
        own_probe = None
        if self._probe is None:
            self._probe = own_probe = HttpProbe()
        try:
            async with asyncio.TaskGroup() as group:
                for app in self._apps:
                    group.create_task(self._probe_loop(app))
                group.create_task(self._report_loop())
        finally:
            if own_probe is not None:
                self._probe = None
                await own_probe.aclose()

    async def _probe_loop(self, app: WorkspaceApp) -> None:
        check = app.healthcheck
        counter = HealthCounter(check.threshold, health=self.healths[app.id])
        interval = float(check.interval)
        next_at = self._clock() + interval
        while True:
            # A fixed-rate ticker: a slow probe (bounded by the interval) delays nothing.
            await self._sleep(max(0.0, next_at - self._clock()))
            next_at += interval
            assert self._probe is not None
            ok = await self._probe(check.url, interval)
            changed = counter.observe(ok, self._clock())
            if changed is not None:
                self.healths[app.id] = changed
                log.info("apphealth.changed", app=app.slug or app.id, health=changed)

    async def _report_loop(self) -> None:
        while True:
            await self._sleep(self._report_every)
            await self.report_if_changed()

    async def report_if_changed(self) -> bool:
        """Post the whole map if it differs from the last one that landed."""
        if self.healths == self._reported:
            return False
        snapshot = dict(self.healths)
        try:
            await self._post(snapshot)
        except WsagentError as exc:
            if self._throttle.failure(error_key(exc), self._clock()) is not None:
                log.warning("apphealth.post_failed", error=str(exc))
            return False
        self._throttle.success()
        self._reported = snapshot
        return True
