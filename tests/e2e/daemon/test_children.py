"""agent.children with real process groups: TERM, grace, then KILL; nothing survives."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest
from structlog.testing import capture_logs

from agent.children import ChildRegistry

pytestmark = pytest.mark.e2e

# A child that ignores TERM (and HUP) and reports that it is ready to be signalled.
STUBBORN = (
    "import signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "signal.signal(signal.SIGHUP, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)
POLITE = "import sys,time; print('ready', flush=True); time.sleep(60)"


async def spawn_group(code: str, *, grandchild: bool = False) -> asyncio.subprocess.Process:
    """A child in its own session; with ``grandchild`` it forks a second member first."""
    if grandchild:
        code = "import os; os.fork(); " + code
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    seen = b""
    async with asyncio.timeout(10):
        while seen.count(b"ready") < (2 if grandchild else 1):  # both members set up
            seen += await proc.stdout.read(64)
    return proc


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_polite_groups_stop_on_term_without_waiting_for_the_grace() -> None:
    registry = ChildRegistry()
    procs = [await spawn_group(POLITE, grandchild=True) for _ in range(2)]
    for proc in procs:
        registry.add(proc.pid, "test")
    started = time.monotonic()
    with capture_logs() as logs:
        await registry.terminate_all(grace=5.0)
    assert time.monotonic() - started < 2.0
    # HUP goes first (a terminal hang-up for shells), then TERM.
    assert all(code in (-1, -15) for code in [await p.wait() for p in procs])
    assert not any(e["event"] == "children.kill_after_grace" for e in logs)
    assert registry.groups == {}


async def test_stubborn_group_is_killed_after_the_grace() -> None:
    registry = ChildRegistry()
    proc = await spawn_group(STUBBORN, grandchild=True)
    registry.add(proc.pid, "stubborn script")
    started = time.monotonic()
    with capture_logs() as logs:
        await registry.terminate_all(grace=0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0
    assert await proc.wait() == -9
    async with asyncio.timeout(5):
        while group_alive(proc.pid):  # the forked grandchild is reaped by init
            await asyncio.sleep(0.02)
    [warning] = [e for e in logs if e["event"] == "children.kill_after_grace"]
    assert warning["what"] == "stubborn script"


async def test_kill_all_now_kills_at_once() -> None:
    registry = ChildRegistry()
    proc = await spawn_group(STUBBORN)
    registry.add(proc.pid, "x")
    registry.kill_all_now()
    async with asyncio.timeout(5):
        assert await proc.wait() == -9
    assert registry.groups == {}


@pytest.mark.parametrize("grace", [0.0, 1.0])
async def test_nothing_registered_or_already_gone_returns_at_once(grace: float) -> None:
    registry = ChildRegistry()
    proc = await spawn_group(POLITE)
    registry.add(proc.pid, "gone")
    proc.kill()
    await proc.wait()
    started = time.monotonic()
    await registry.terminate_all(grace)
    assert time.monotonic() - started < 0.5
