"""The web front end in a real browser (Debian's Chromium through Playwright): sign in,
see the agent connected, use the terminal (echo, reload replay, resize), sign out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ControlPlane
from tests.web.browser import (
    Shots,
    browser,
    context,
    in_session_loop,
    make_user,
    needs_chromium,
    plane,
    shots,
    sign_in,
    start_agent,
    stop_agent,
    term_text_js,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, needs_chromium, in_session_loop]
__all__ = ["browser", "context", "plane", "shots"]  # fixtures used by name

STTY = re.compile(r"S:(\d+) (\d+):E")


async def _term_text(page: Any) -> str:
    return str(await page.evaluate(term_text_js()))


async def _wait_text(page: Any, pattern: str) -> None:
    await page.wait_for_function(
        "(re) => new RegExp(re).test(document.querySelector('.xterm-rows')?.innerText ?? '')",
        arg=pattern,
    )


async def _stty(page: Any) -> tuple[int, int]:
    before = len(STTY.findall(await _term_text(page)))
    await page.keyboard.type("echo S:$(stty size):E\n")
    await page.wait_for_function(
        "([re, n]) => (document.querySelector('.xterm-rows')?.innerText ?? '')"
        ".match(new RegExp(re, 'g'))?.length > n",
        arg=[STTY.pattern, before],
    )
    rows, cols = STTY.findall(await _term_text(page))[-1]
    return int(rows), int(cols)


async def test_sign_in_dashboard_terminal_and_sign_out(
    plane: ControlPlane, context: Any, shots: Shots, tmp_path: Path
) -> None:
    await make_user(plane, "alice")
    agents = await plane.create_workspace("alice", "dev")
    _, token = agents["main"]
    agent = await start_agent(plane, token, tmp_path, SHELL="/bin/sh")
    try:
        page = await context.new_page()
        await sign_in(page, plane, "alice", shots)
        await page.wait_for_selector('[data-agent="main"][data-status="connected"]')
        await shots(page, "dashboard-connected")

        await page.click('[data-agent="main"] >> text=Terminal')
        await page.wait_for_url(
            re.compile(r".*/@alice/dev\.main/terminal\?reconnect=[0-9a-f-]{36}")
        )
        await page.wait_for_selector('#term-state[data-state="connected"]', state="attached")
        await page.click("#term")
        await page.keyboard.type("echo hi-$((6*7))\n")
        await _wait_text(page, "hi-42")
        # UTF-8 both ways, and the 256-colour palette.
        await page.keyboard.type("echo 'u:ü世界'\n")
        await _wait_text(page, "\\nu:ü世界")
        await page.keyboard.type("printf '\\033[38;5;202mC%s\\033[0m\\n' 256\n")
        await page.wait_for_selector(".xterm-rows span.xterm-fg-202:has-text('C256')")
        await shots(page, "terminal-echo")

        url = page.url
        await page.reload()
        await page.wait_for_selector('#term-state[data-state="connected"]', state="attached")
        assert page.url == url  # the reconnect id stayed
        await _wait_text(page, "hi-42")  # the scrollback was replayed
        await shots(page, "terminal-reloaded")

        await page.click("#term")
        big = await _stty(page)
        await page.set_viewport_size({"width": 640, "height": 360})
        await page.wait_for_function(
            "(rows) => document.querySelectorAll('.xterm-rows > div').length < rows",
            arg=big[0],
        )
        small = await _stty(page)
        rows_shown = await page.evaluate("document.querySelectorAll('.xterm-rows > div').length")
        assert small[0] < big[0] and small[1] < big[1], (big, small)
        assert small[0] == rows_shown
        await shots(page, "terminal-resized")

        # A control-plane restart: the page shows it and re-attaches by itself.
        await page.evaluate(
            """() => { const badge = document.getElementById('term-state');
            window.sawDrop = false;
            new MutationObserver(() => { if (badge.dataset.state !== 'connected')
                window.sawDrop = true; }).observe(badge, {attributes: true}); }"""
        )
        await plane.restart()
        await page.wait_for_function(
            "() => window.sawDrop && document.getElementById('term-state').dataset.state"
            " === 'connected'"
        )
        await page.click("#term")
        await page.keyboard.type("echo back-$((40+2))\n")
        await _wait_text(page, "back-42")
        assert "hi-42" in await _term_text(page)
        await shots(page, "terminal-after-restart")

        await page.goto(plane.url + "/")
        await page.click("header button:has-text('Sign out')")
        await page.wait_for_url(plane.url + "/login")
        cookies = {c["name"] for c in await context.cookies()}
        assert "coder_session_token" not in cookies
        await shots(page, "signed-out")
    finally:
        await stop_agent(agent)
