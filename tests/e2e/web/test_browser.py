"""The web front end in a real browser (Debian's Chromium through Playwright): sign in,
see the agent connected, use the terminal (echo, reload replay, resize, restart), sign
out; open an app and a port; follow askpass's URL through sign-in to the git-auth form."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from agent.sessionenv import wsagent_executable
from controlplane.config import ServerConfig
from controlplane.store.records import GitAuthProvider
from tests.conftest import ControlPlane
from tests.e2e.web.browser import (
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
from tests.e2e.web.conftest import PASSWORD
from tests.e2e.web.echo_app import running_echo_app
from tests.e2e.workspace_start.githttp import git_backend, make_repo, serve_git

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


async def test_app_and_port_links(
    plane: ControlPlane, context: Any, shots: Shots, tmp_path: Path
) -> None:
    async with running_echo_app() as app_port, running_echo_app() as other_port:
        await make_user(plane, "alice")
        agents = await plane.create_workspace(
            "alice",
            "dev",
            [{"name": "main", "apps": [{"slug": "echo", "url": f"http://127.0.0.1:{app_port}/"}]}],
        )
        agent = await start_agent(plane, agents["main"][1], tmp_path)
        try:
            page = await context.new_page()
            await sign_in(page, plane, "alice")
            await page.wait_for_selector('[data-agent="main"][data-status="connected"]')
            port_link = f'[data-port="{other_port}"] a'
            await page.wait_for_selector(port_link)  # listening ports arrive live
            await shots(page, "dashboard-app-and-port")

            async with context.expect_page() as opened:
                await page.click('[data-app="echo"] a')
            app_page = await opened.value
            await app_page.wait_for_selector("#echo:has-text('echo:ping')")
            assert "/@alice/dev.main/apps/echo/" in app_page.url
            await shots(app_page, "app-page-websocket-echo")

            async with context.expect_page() as opened:
                await page.click(port_link)
            port_page = await opened.value
            await port_page.wait_for_selector("#echo:has-text('echo:ping')")
            assert f"/@alice/dev.main/ports/{other_port}/" in port_page.url
            await shots(port_page, "port-page")
        finally:
            await stop_agent(agent)


@pytest.mark.skipif(git_backend() is None, reason="git http-backend is not installed")
async def test_askpass_url_leads_through_sign_in_to_the_git_auth_form(
    plane: ControlPlane, context: Any, shots: Shots, tmp_path: Path
) -> None:
    await make_user(plane, "jo")
    agents = await plane.create_workspace("jo", "dev")
    _, token = agents["main"]
    await plane.store.upsert_gitauth_provider(
        GitAuthProvider("forge", r"^http://127\.0\.0\.1:", "gitlab")
    )
    make_repo(tmp_path / "srv")
    async with serve_git(tmp_path / "srv", lambda u, p: (u, p) == ("oauth2", "tok-123")) as git:
        home = tmp_path / "home"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ASKPASS": wsagent_executable(),
            "CODER_AGENT_URL": plane.url,
            "CODER_AGENT_TOKEN": token,
        }
        clone = await asyncio.create_subprocess_exec(
            "git", "clone", "-q", f"{git.url}/repo.git", str(tmp_path / "out"),
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            assert clone.stderr is not None
            line = (await asyncio.wait_for(clone.stderr.readline(), 30)).decode()
            url = re.search(r"https?://\S+/gitauth/forge", line)
            assert url, line

            page = await context.new_page()
            await page.goto(url.group(0))
            await page.wait_for_url(re.compile(r".*/login\?return_to=/gitauth/forge"))
            await page.fill("input[name=username]", "jo")
            await page.fill("input[name=password]", PASSWORD)
            await shots(page, "askpass-sign-in")
            await page.click("button[type=submit]")
            await page.wait_for_url(url.group(0))
            await shots(page, "git-auth-form")
            await page.fill("input[name=token]", "tok-123")
            await page.click("form[action='/gitauth/forge'] button[type=submit]")
            await page.wait_for_selector("text=Saved")
            await shots(page, "git-auth-saved")
            _, err = await asyncio.wait_for(clone.communicate(), 60)
            assert clone.returncode == 0, err
        finally:
            if clone.returncode is None:
                clone.kill()
                await clone.wait()
    assert (tmp_path / "out" / "README").exists()


async def test_another_origin_cannot_use_the_cookie(
    plane: ControlPlane, context: Any, shots: Shots
) -> None:
    """A page on another origin of the same site (so the browser does send the cookie)
    opens a WebSocket and posts a form to the server: both are refused with 403."""
    await make_user(plane, "alice")
    agents = await plane.create_workspace("alice", "dev")
    agent_id, _ = agents["main"]
    ws_url = (
        plane.url.replace("http://", "ws://") + f"/api/v2/workspaceagents/{agent_id}/coordinate"
    )
    evil_page = f"""<!doctype html><title>evil</title><p id="ws">waiting</p>
<form id="f" method="post" action="{plane.url}/logout"><input name="csrf" value="x"></form>
<script>
const ws = new WebSocket("{ws_url}");
ws.onopen = () => {{ document.getElementById("ws").textContent = "open"; }};
ws.onclose = (e) => {{ document.getElementById("ws").textContent = "closed " + e.code; }};
</script>"""

    async def serve(request: web.Request) -> web.Response:
        return web.Response(text=evil_page, content_type="text/html")

    evil = web.Application()
    evil.router.add_get("/", serve)
    runner = web.AppRunner(evil, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    evil_url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        page = await context.new_page()
        await sign_in(page, plane, "alice")
        with capture_logs() as logs:
            await page.goto(evil_url)
            await page.wait_for_selector("#ws:has-text('closed')")
            assert await page.inner_text("#ws") == "closed 1006"  # the handshake failed
            await shots(page, "cross-origin-websocket-refused")
            await page.evaluate("document.getElementById('f').submit()")
            await page.wait_for_url(f"{plane.url}/logout")
            assert "Cross-origin request refused." in await page.content()
            await shots(page, "cross-origin-form-refused")
        refused = [
            e for e in logs if e["event"] == "http.request_failed" and e.get("status") == 403
        ]
        assert {e["path"] for e in refused} == {
            f"/api/v2/workspaceagents/{agent_id}/coordinate",
            "/logout",
        }
        me = await context.request.get(f"{plane.url}/api/v2/users/me")
        assert me.status == 200  # still signed in: the post did nothing
    finally:
        await runner.cleanup()


async def test_subdomain_app_signs_in_through_the_access_url(
    context: Any, shots: Shots, tmp_path: Path
) -> None:
    """With a wildcard access URL (here ``*.localhost``, which Chromium resolves to
    loopback) a subdomain app gets its own session via /apps-auth, then its page and its
    WebSocket work on its own origin."""
    config = ServerConfig(
        data_dir=tmp_path / "server",
        host="127.0.0.1",
        port=0,
        agent_heartbeat_interval=1.0,
        wildcard_access_url="*.localhost",
    )
    cp = ControlPlane(config)
    await cp.start()
    try:
        async with running_echo_app() as app_port:
            await make_user(cp, "alice")
            apps = [{"slug": "echo", "url": f"http://127.0.0.1:{app_port}/", "subdomain": True}]
            agents = await cp.create_workspace("alice", "dev", [{"name": "main", "apps": apps}])
            agent = await start_agent(cp, agents["main"][1], tmp_path)
            try:
                page = await context.new_page()
                await sign_in(page, cp, "alice")
                app_url = f"http://echo--main--dev--alice.localhost:{cp.config.port}/"
                link = page.locator('[data-app="echo"] a')
                await link.wait_for()
                assert await link.get_attribute("href") == app_url
                await page.wait_for_selector('[data-agent="main"][data-status="connected"]')
                await page.goto(app_url + "hello")
                await page.wait_for_selector("#echo:has-text('echo:ping')")
                assert page.url == app_url + "hello"
                assert await page.inner_text("#path") == "/hello"
                app_cookies = await context.cookies(app_url)
                assert [c["name"] for c in app_cookies] == ["wsagent_app_token"]
                await shots(page, "subdomain-app")
            finally:
                await stop_agent(agent)
    finally:
        await cp.stop()
