"""The supervisor and Agent.shutdown in-process: crashed components restart, shutdown
cancels them and stays within its budget."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from structlog.testing import capture_logs

from agent.compose import compose
from agent.config import AgentConfig
from agent.daemon import Agent


def make_agent(tmp_path: Path, url: str = "http://127.0.0.1:1") -> Agent:
    return compose(AgentConfig(url=url, auth="token", token="t" * 36, log_dir=tmp_path), environ={})


async def test_a_crashing_task_is_restarted_and_logged_once(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.supervisor.restart_delay = 0.01
    runs: list[int] = []
    healthy = asyncio.Event()

    async def component() -> None:
        runs.append(len(runs))
        if len(runs) < 5:
            raise RuntimeError("bug")
        healthy.set()
        await asyncio.Event().wait()

    with capture_logs() as logs:
        agent.supervisor.start("flaky", component)
        async with asyncio.timeout(5):
            await healthy.wait()
        await agent.shutdown(budget=1.0)
    assert len(runs) == 5
    crashes = [e for e in logs if e["event"] == "agent.task_crashed"]
    assert len(crashes) == 1  # the same bug four times: one line
    assert crashes[0]["task"] == "flaky"


async def test_shutdown_cancels_tasks_and_survives_a_failing_hook(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    cancelled = asyncio.Event()
    called: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    def bad_hook() -> None:
        raise ValueError("hook bug")

    agent = dataclasses.replace(
        agent, on_shutdown=(*agent.on_shutdown, bad_hook, lambda: called.append("second"))
    )
    agent.supervisor.start("forever", forever)
    await asyncio.sleep(0)  # let the task start
    started = time.monotonic()
    with capture_logs() as logs:
        await agent.shutdown(budget=2.0)
    assert time.monotonic() - started < 2.0
    assert cancelled.is_set()
    assert called == ["second"]
    assert any(e["event"] == "agent.shutdown_hook_failed" for e in logs)
    assert logs[-1]["event"] == "agent.stopped"


async def test_run_returns_promptly_when_stopped_between_attempts(
    tmp_path: Path, unused_port_url: str
) -> None:
    agent = make_agent(tmp_path, unused_port_url)
    stop = asyncio.Event()
    with capture_logs() as logs:
        runner = asyncio.create_task(agent.run(stop))
        async with asyncio.timeout(5):
            while not any(e["event"] == "agent.run_failed" for e in logs):
                await asyncio.sleep(0.01)
        stop.set()
        async with asyncio.timeout(1):
            await runner
    await agent.shutdown(budget=1.0)
