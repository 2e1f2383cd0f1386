"""App health: probe each app's health-check URL and report the whole map on change.

As Coder's agent does (docs/protocol.md, "App health"): apps whose health is ``disabled``
are ignored; one prober runs per app with a URL, a positive interval and a positive
threshold. The first probe comes one interval after start, and each probe times out after
the interval. Any answer below 500 is healthy. An app turns unhealthy on the
(threshold+1)-th consecutive failure; one success makes it healthy again. Every second the
map is compared with the last one reported and, on any change, posted whole as
``{"Healths": {...}}``.

Fixes over Coder:

* A failed post is retried (backoff 1 s to 30 s, throttled logs) until one lands, instead
  of being dropped until the next change.
* ``resend()`` posts the current map again; the agent calls it after each reconnect, so a
  server that missed a post (or lost its state) catches up.
* ``update(apps)`` adds and removes probers to match new metadata; an app whose check is
  unchanged keeps its prober and its health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx
import structlog

from agent.clock import Clock
from agent.retry import Retry, is_retryable, traceback_fields
from agent.sdk.models import WorkspaceApp

log = structlog.get_logger()

HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"
DISABLED: Final = "disabled"
REPORT_EVERY: Final = 1.0
RETRY_FLOOR: Final = 1.0
RETRY_CEILING: Final = 30.0

PostHealths = Callable[[dict[str, str]], Awaitable[None]]
# probe(url, limit) -> True when the app answered below 500 within limit seconds.
Probe = Callable[[str, float], Awaitable[bool]]


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


def tracked_apps(apps: Sequence[WorkspaceApp]) -> list[WorkspaceApp]:
    """The apps in the reported map: every app whose health is not ``disabled``."""
    return [app for app in apps if app.health != DISABLED]


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
    """Probes the apps and reports their health until cancelled.

    Long-lived: ``update`` swaps the apps in place and ``resend`` re-posts the map, so the
    agent keeps one reporter across reconnects.
    """

    def __init__(
        self,
        apps: Sequence[WorkspaceApp],
        post: PostHealths,
        *,
        clock: Clock,
        probe: Probe | None = None,
        report_every: float = REPORT_EVERY,
        retry: Retry | None = None,
    ) -> None:
        # The map starts with the server's values, so nothing is posted until a change.
        self.healths: dict[str, str] = {}
        self._reported: dict[str, str] = {}
        self._checks: dict[str, tuple[str, int, int]] = {}
        self._probers: dict[str, asyncio.Task[None]] = {}
        self._post = post
        self._probe = probe
        self._clock = clock
        self._report_every = report_every
        self._retry = retry or Retry(RETRY_FLOOR, RETRY_CEILING)
        self._retry_at: float | None = None
        self._resend = False
        self._running = False
        self._apps: dict[str, WorkspaceApp] = {}
        self.update(apps)

    @property
    def probed(self) -> set[str]:
        """Ids of the apps that have a prober."""
        return {app_id for app_id in self._apps if app_id in self._checks}

    def update(self, apps: Sequence[WorkspaceApp]) -> None:
        """Match the probers to ``apps``: start new ones, stop removed or changed ones.

        An app that stays keeps its current health (newer than the server's copy); a new
        app starts from the server's value.
        """
        tracked = {app.id: app for app in tracked_apps(apps)}
        probed = {app.id for app in probed_apps(apps)}
        for app_id in list(self._apps):
            if app_id not in tracked:
                self.healths.pop(app_id, None)
                self._reported.pop(app_id, None)
        for app_id, app in tracked.items():
            if app_id not in self.healths:
                self.healths[app_id] = app.health
                self._reported[app_id] = app.health  # the server's own value: no news
        self._apps = tracked
        for app_id in list(self._checks):
            kept = tracked.get(app_id)
            if kept is None or app_id not in probed or _check_key(kept) != self._checks[app_id]:
                del self._checks[app_id]
                task = self._probers.pop(app_id, None)
                if task is not None:
                    task.cancel()
        for app_id in probed:
            if app_id not in self._checks:
                self._checks[app_id] = _check_key(tracked[app_id])
        if self._running:
            self._start_probers()

    def resend(self) -> None:
        """Post the current map again at the next tick, even if unchanged (a reconnect)."""
        self._resend = True
        self._retry_at = None  # the server is reachable again: no need to wait out a backoff
        self._retry.reset_backoff()

    async def run(self) -> None:
        log.info("apphealth.started", apps=len(self._checks))
        own_probe = None
        if self._probe is None:
            self._probe = own_probe = HttpProbe()
        self._running = True
        try:
            self._start_probers()
            # Let the probers arm their first tick before the report ticker arms its own, so
            # a change made at a tick they share is reported at that same tick.
            await asyncio.sleep(0)
            while True:
                await self._clock.sleep(self._report_every)
                if self._retry_at is None or self._clock.monotonic() >= self._retry_at:
                    await self.report_if_changed()
        finally:
            self._running = False
            for task in self._probers.values():
                task.cancel()
            if self._probers:
                await asyncio.wait(list(self._probers.values()))
            self._probers.clear()
            if own_probe is not None:
                self._probe = None
                await own_probe.aclose()

    def _start_probers(self) -> None:
        for app_id in self._checks:
            if app_id not in self._probers:
                task = asyncio.create_task(self._probe_loop(self._apps[app_id]))
                self._probers[app_id] = task

    async def _probe_loop(self, app: WorkspaceApp) -> None:
        check = app.healthcheck
        counter = HealthCounter(check.threshold, health=self.healths[app.id])
        interval = float(check.interval)
        next_at = self._clock.monotonic() + interval
        while True:
            # A fixed-rate ticker: a slow probe (bounded by the interval) delays nothing.
            await self._clock.sleep(max(0.0, next_at - self._clock.monotonic()))
            next_at += interval
            assert self._probe is not None
            ok = await self._probe(check.url, interval)
            changed = counter.observe(ok, self._clock.monotonic())
            if changed is not None and app.id in self.healths:
                self.healths[app.id] = changed
                log.info("apphealth.changed", app=app.slug or app.id, health=changed)

    async def report_if_changed(self) -> bool:
        """Post the whole map if it differs from the last one that landed (or a resend is
        due). True when a post landed; a failure schedules a retry after a backoff."""
        if not self.healths:
            self._resend = False  # the server rejects an empty map; there is nothing to say
            return False
        if self.healths == self._reported and not self._resend:
            return False
        snapshot = dict(self.healths)
        try:
            await self._post(snapshot)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            now = self._clock.monotonic()
            failure = self._retry.failed(exc, now)
            self._retry_at = now + failure.delay
            if failure.repeats is not None:
                log.warning("apphealth.post_failed", error=str(exc), **traceback_fields(exc))
            return False
        self._retry.succeeded()
        self._retry_at = None
        self._resend = False
        self._reported = snapshot
        return True


def _check_key(app: WorkspaceApp) -> tuple[str, int, int]:
    check = app.healthcheck
    return (check.url, check.interval, check.threshold)
