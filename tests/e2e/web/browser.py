"""Debian's Chromium driven by Playwright (from PyPI; its own browser download is never
used), one browser per test session, and the real control plane and agent in the same
event loop (the session's: Playwright's objects belong to the loop that made them).

Screenshots of every step land in ``test-artifacts/web/<test>/`` (gitignored).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
import pytest_asyncio

from controlplane.admin import set_password
from controlplane.config import ServerConfig
from tests.conftest import REPO, AgentProcess, ControlPlane, agent_env
from tests.e2e.web.conftest import PASSWORD

CHROMIUM: Final = Path("/usr/bin/chromium")
# Headless and quiet: no GPU, no QUIC, no first-run UI, no background network calls.
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS: Final = REPO / "test-artifacts" / "web"

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup does it)"
)
in_session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        # launch() gives the browser a fresh, temporary user-data-dir of its own.
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class Shots:
    """Numbered screenshots of one test's steps."""

    def __init__(self, name: str) -> None:
        self.dir = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.png"):
            old.unlink()
        self.count = 0

    async def __call__(self, page: Any, step: str) -> None:
        self.count += 1
        await page.screenshot(path=str(self.dir / f"{self.count:02d}-{step}.png"))


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    return Shots(request.node.name)


@pytest_asyncio.fixture(loop_scope="session")
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    config = ServerConfig(
        data_dir=tmp_path / "server", host="127.0.0.1", port=0, agent_heartbeat_interval=1.0
    )
    cp = ControlPlane(config)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Any) -> AsyncIterator[Any]:
    ctx = await browser.new_context(viewport={"width": 1100, "height": 700})
    ctx.set_default_timeout(20_000)
    try:
        yield ctx
    finally:
        await ctx.close()


async def start_agent(cp: ControlPlane, token: str, tmp_path: Path, **env: str) -> AgentProcess:
    log_dir = tmp_path / "agent-logs"
    log_dir.mkdir(exist_ok=True)
    full_env = {**agent_env(cp.url, token, log_dir), **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "agent",
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        cwd=str(tmp_path),
        limit=1 << 20,
    )
    agent = AgentProcess(proc, log_dir)
    agent.start_reading()
    return agent


async def stop_agent(agent: AgentProcess) -> None:
    if agent.proc.returncode is None:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(agent.proc.wait(), 10)
        except TimeoutError:
            agent.kill()
            await agent.proc.wait()
    if agent._reader is not None:
        agent._reader.cancel()
        await asyncio.gather(agent._reader, return_exceptions=True)


async def make_user(cp: ControlPlane, name: str) -> str:
    _, token = await cp.create_user(name)
    await set_password(cp.store, name, PASSWORD)
    return token


async def sign_in(page: Any, cp: ControlPlane, user: str, shots: Shots | None = None) -> None:
    await page.goto(cp.url + "/")
    await page.wait_for_url(re.compile(r".*/login\?return_to=.*"))
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", PASSWORD)
    if shots is not None:
        await shots(page, "sign-in-form")
    await page.click("button[type=submit]")
    await page.wait_for_url(cp.url + "/")


def term_text_js() -> str:
    return "() => document.querySelector('.xterm-rows')?.innerText ?? ''"
