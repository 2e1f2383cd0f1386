"""agent.apphealth under a virtual clock: the threshold counter, probe cadence, reporting."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from agent.apphealth import AppHealthReporter, HealthCounter, probed_apps
from agent.errors import TransportError
from agent.retry import Retry
from agent.sdk.models import Healthcheck, WorkspaceApp
from tests.fakes.clock import FakeClock

A, B, C, D = (f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 5))


def app(
    app_id: str,
    url: str = "http://app",
    interval: int = 1,
    threshold: int = 1,
    health: str = "initializing",
) -> WorkspaceApp:
    return WorkspaceApp(
        id=app_id, slug=app_id[-1], healthcheck=Healthcheck(url, interval, threshold), health=health
    )


class Probes:
    """A fake prober: each URL answers from a function of the probe count."""

    def __init__(self, clock: FakeClock, answers: dict[str, Callable[[int], bool]]) -> None:
        self.clock = clock
        self.answers = answers
        self.calls: list[tuple[str, float, float]] = []

    async def __call__(self, url: str, limit: float) -> bool:
        n = sum(1 for c in self.calls if c[0] == url)
        self.calls.append((url, self.clock.now, limit))
        return self.answers[url](n)


class Posts:
    def __init__(self, clock: FakeClock, failures: int = 0) -> None:
        self.clock = clock
        self.failures = failures
        self.landed: list[tuple[float, dict[str, str]]] = []
        self.tried = 0

    async def __call__(self, healths: dict[str, str]) -> None:
        self.tried += 1
        if self.failures:
            self.failures -= 1
            raise TransportError(
                "POST", "http://cp/api/v2/workspaceagents/me/app-health", "refused"
            )
        self.landed.append((self.clock.now, healths))


# ---------------------------------------------------------------- the counter


def test_unhealthy_only_on_the_threshold_plus_first_consecutive_failure() -> None:
    counter = HealthCounter(threshold=2)
    assert counter.observe(False, 1.0) is None
    assert counter.observe(False, 2.0) is None
    assert counter.observe(False, 3.0) == "unhealthy"
    assert counter.changed_at == 3.0
    assert counter.observe(False, 4.0) is None  # no change, nothing to report


def test_one_success_makes_it_healthy_and_resets_the_count() -> None:
    counter = HealthCounter(threshold=1, health="unhealthy")
    assert counter.observe(True, 1.0) == "healthy"
    assert counter.failures == 0
    assert counter.observe(False, 2.0) is None  # one failure is tolerated again
    assert counter.observe(True, 3.0) is None
    assert counter.observe(False, 4.0) is None
    assert counter.observe(False, 5.0) == "unhealthy"


def test_which_apps_are_probed() -> None:
    apps = [
        app(A),
        app(B, health="disabled"),
        app(C, url=""),
        app(D, interval=0),
        app("00000000-0000-4000-8000-000000000005", threshold=0),
    ]
    assert [a.id for a in probed_apps(apps)] == [A]


# ---------------------------------------------------------------- the reporter


async def run_reporter(reporter: AppHealthReporter, clock: FakeClock, until: float) -> None:
    task = asyncio.create_task(reporter.run())
    await clock.advance_to(until)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_healthy_and_500_apps_are_reported_whole_on_each_change() -> None:
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {"http://ok": lambda n: True, "http://500": lambda n: False})
    posts = Posts(clock)
    apps = [app(A, "http://ok"), app(B, "http://500", threshold=1), app(C, health="disabled")]
    reporter = AppHealthReporter(apps, posts, probe=probes, clock=clock)
    await run_reporter(reporter, clock, 5.0)

    assert posts.landed == [
        (1.0, {A: "healthy", B: "initializing"}),
        (2.0, {A: "healthy", B: "unhealthy"}),
    ]


async def test_first_probe_one_interval_after_start_then_one_per_interval() -> None:
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {"http://app": lambda n: True})
    reporter = AppHealthReporter([app(A, interval=5)], Posts(clock), probe=probes, clock=clock)
    await run_reporter(reporter, clock, 21.0)
    assert [t for _, t, _ in probes.calls] == [5.0, 10.0, 15.0, 20.0]
    assert {limit for _, _, limit in probes.calls} == {
        5.0
    }  # each probe times out after the interval


async def test_recovery_is_reported() -> None:
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {"http://app": lambda n: n >= 3})  # fails 3 times, then answers
    posts = Posts(clock)
    reporter = AppHealthReporter([app(A, threshold=1)], posts, probe=probes, clock=clock)
    await run_reporter(reporter, clock, 6.0)
    assert [h[A] for _, h in posts.landed] == ["unhealthy", "healthy"]


async def test_a_failed_post_is_retried_with_backoff_until_it_lands() -> None:
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {"http://app": lambda n: True})
    posts = Posts(clock, failures=4)
    retry = Retry(1.0, 30.0, rng=random.Random(0))
    reporter = AppHealthReporter([app(A)], posts, probe=probes, clock=clock, retry=retry)
    with capture_logs() as logs:
        await run_reporter(reporter, clock, 60.0)
    assert posts.tried == 5
    assert posts.landed and posts.landed[0][1] == {A: "healthy"}
    # Backed off (1, 2, 4, 8 s ceilings with equal jitter) rather than once a tick.
    assert 1.0 + 0.5 + 1 + 2 + 4 <= posts.landed[0][0] <= 1.0 + 1 + 2 + 4 + 8 + 4
    assert [e["event"] for e in logs].count("apphealth.post_failed") == 1  # throttled
    assert posts.tried == 5  # and never posted again once it landed


async def test_resend_posts_the_current_map_again_within_a_second() -> None:
    """A reconnect calls resend(): the unchanged map is posted again, cutting any backoff."""
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {"http://app": lambda n: True})
    posts = Posts(clock)
    reporter = AppHealthReporter([app(A)], posts, probe=probes, clock=clock)
    task = asyncio.create_task(reporter.run())
    await clock.advance_to(5.0)
    assert posts.landed == [(1.0, {A: "healthy"})]
    reporter.resend()
    await clock.advance_to(6.0)
    assert posts.landed[1:] == [(6.0, {A: "healthy"})]
    await clock.advance_to(10.0)
    assert len(posts.landed) == 2  # once per resend

    posts.failures = 2  # the server is down: backing off
    reporter.healths[A] = "unhealthy"
    await clock.advance_to(13.0)
    assert posts.tried == 4
    reporter.resend()  # reconnected: post at the next tick, not after the backoff
    await clock.advance_to(14.0)
    assert posts.tried == 5 and posts.landed[-1][1] == {A: "unhealthy"}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_update_adds_and_removes_probers_to_match_metadata() -> None:
    clock = FakeClock(start=0.0)
    probes = Probes(
        clock, {"http://a": lambda n: True, "http://b": lambda n: False, "http://c": lambda n: True}
    )
    posts = Posts(clock)
    a, b = app(A, "http://a"), app(B, "http://b")
    reporter = AppHealthReporter([a], posts, probe=probes, clock=clock)
    task = asyncio.create_task(reporter.run())
    await clock.advance_to(3.5)
    assert posts.landed == [(1.0, {A: "healthy"})]

    reporter.update([a, b])  # an app added by a metadata change is probed
    assert reporter.probed == {A, B}
    await clock.advance_to(6.0)
    # Unhealthy at its second failure (5.5), posted at the next tick: within 1 s.
    assert posts.landed[1:] == [(6.0, {A: "healthy", B: "unhealthy"})]
    probed_b = [t for url, t, _ in probes.calls if url == "http://b"]
    assert probed_b == [4.5, 5.5]  # one interval after it was added

    reporter.update([b])  # A removed: no longer probed, no longer in the map
    a_probes = sum(1 for url, _, _ in probes.calls if url == "http://a")
    await clock.advance_to(10.0)
    assert sum(1 for url, _, _ in probes.calls if url == "http://a") == a_probes
    assert reporter.healths == {B: "unhealthy"}

    # A changed check restarts its prober with the new URL; the health is kept.
    reporter.update([app(B, "http://c", interval=2)])
    await clock.advance_to(12.5)
    assert [t for url, t, _ in probes.calls if url == "http://c"] == [12.0]
    assert posts.landed[-1] == (12.0, {B: "healthy"})

    reporter.update([app(B, health="disabled")])  # disabled: dropped, nothing posted
    tried = posts.tried
    await clock.advance_to(20.0)
    assert reporter.probed == set() and posts.tried == tried
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_at_most_two_probes_a_second_at_interval_one() -> None:
    """Coder's NotSpamming case, under the virtual clock: even a probe that fails at once
    does not make the ticker catch up or spin."""
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {"http://app": lambda n: False})
    reporter = AppHealthReporter([app(A, interval=1)], Posts(clock), probe=probes, clock=clock)
    await run_reporter(reporter, clock, 10.5)
    assert len(probes.calls) == 10


async def test_unchanged_server_values_are_not_posted() -> None:
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {"http://app": lambda n: True})
    posts = Posts(clock)
    reporter = AppHealthReporter([app(A, health="healthy")], posts, probe=probes, clock=clock)
    await run_reporter(reporter, clock, 10.0)
    assert posts.tried == 0


@pytest.mark.parametrize("apps", [[], [app(A, health="disabled")], [app(A, url="")]])
async def test_nothing_to_probe_means_no_probe_and_no_post(apps: list[WorkspaceApp]) -> None:
    clock = FakeClock(start=0.0)
    probes = Probes(clock, {})
    posts = Posts(clock)
    reporter = AppHealthReporter(apps, posts, probe=probes, clock=clock)
    reporter.resend()  # even a reconnect has nothing to post: an empty map is rejected
    await run_reporter(reporter, clock, 10.0)
    assert probes.calls == [] and posts.tried == (1 if apps and apps[0].health != "disabled" else 0)
