"""Sign-in, sign-out and the cookie's safety, over real sockets against the real server."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import pytest
from structlog.testing import capture_logs

from tests.conftest import REPO, ControlPlane
from tests.e2e.test_tls import make_ca_and_server_cert
from tests.e2e.web.conftest import PASSWORD, WebClient, user_with_password

pytestmark = pytest.mark.e2e

MakeClient = Callable[[], Awaitable[WebClient]]
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}


def assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-eval" not in csp and "script-src 'self';" in csp


async def test_sign_in_sets_a_safe_cookie_and_sign_out_revokes_it(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    await user_with_password(control_plane, "alice")
    client = await web_client()
    page = await client.http.get("/login", headers={"Accept": "text/html"})
    assert page.status_code == 200 and 'action="/login"' in page.text
    assert_security_headers(page)

    response = await client.sign_in("alice", return_to="/gitauth/github")
    assert response.status_code == 303
    assert response.headers["location"] == "/gitauth/github"
    cookie = next(
        v for k, v in response.headers.multi_items() if k == "set-cookie" and "coder_session" in v
    )
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "expires", "path"} <= flags, cookie
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in flags  # plain http on 127.0.0.1; https adds Secure
    session = client.session
    me = await client.http.get("/api/v2/users/me")
    assert me.status_code == 200 and me.json()["username"] == "alice"

    out = await client.form("/logout", {})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    async with control_plane.http(session) as stale:
        assert (await stale.get("/api/v2/users/me")).status_code == 401


async def test_wrong_password_then_rate_limited_and_logged(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    await user_with_password(control_plane, "alice")
    client = await web_client()
    with capture_logs() as logs:
        statuses = [(await client.sign_in("alice", "wrong password")).status_code for _ in range(6)]
        # Even the right password is refused while the limit holds.
        right = await client.sign_in("alice", PASSWORD)
    assert statuses == [401] * 5 + [429]
    assert right.status_code == 429 and int(right.headers["retry-after"]) > 0
    assert not client.session
    limited = [e for e in logs if e["event"] == "login.rate_limited"]
    assert limited and limited[0]["user"] == "alice"
    assert all(PASSWORD not in repr(e) for e in logs)


async def test_sign_in_with_a_session_token_and_return_to_stays_on_this_site(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    _, token = await control_plane.create_user("bob")  # no password
    client = await web_client()
    page = await client.http.get("/login?return_to=https://evil.example/x")
    assert 'name="return_to" value="/"' in page.text
    response = await client.form("/login", {"token": token, "return_to": "//evil.example"})
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert client.session and client.session != token  # a new browser session
    # No password set: a password attempt fails like a wrong one.
    other = await web_client()
    assert (await other.sign_in("bob", "anything goes")).status_code == 401


async def test_cross_origin_and_csrf_less_posts_are_refused(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    await user_with_password(control_plane, "alice")
    client = await web_client()
    fields = {"username": "alice", "password": PASSWORD}
    evil = await client.form("/login", fields, origin="https://evil.example")
    assert evil.status_code == 403 and evil.json()["message"] == "Cross-origin request refused."
    no_csrf = await client.http.post("/login", data=fields, headers={"Origin": client.origin})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["message"]
    no_origin = await client.http.post("/login", data={**fields, "csrf": "x" * 43})
    assert no_origin.status_code == 403
    assert not client.session


async def test_form_bodies_are_capped_even_when_chunked(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    client = await web_client()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"a" * 1024

    response = await client.http.post(
        "/login",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": client.origin},
    )
    assert response.status_code == 413
    assert response.request.headers.get("transfer-encoding") == "chunked"


async def test_cookie_websocket_needs_our_origin(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    await user_with_password(control_plane, "alice")
    agents = await control_plane.create_workspace("alice", "dev")
    agent_id, _ = agents["main"]
    client = await web_client()
    await client.sign_in("alice")
    url = control_plane.url.replace("http", "ws") + f"/api/v2/workspaceagents/{agent_id}/coordinate"
    cookie = {"Cookie": f"coder_session_token={client.session}"}
    async with aiohttp.ClientSession() as session:
        for origin in ("https://evil.example", "null", control_plane.url + ".evil.example"):
            headers = {**cookie, "Origin": origin}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url, headers=headers)
            assert refused.value.status == 403
        ws = await session.ws_connect(url, headers={**cookie, "Origin": client.origin})
        await ws.close()
        # Without an Origin it is no browser (Coder's SDK sends the cookie, no Origin).
        ws = await session.ws_connect(url, headers=cookie)
        await ws.close()
        # Token-in-header clients (the CLI) are not browsers: no Origin needed.
        token = {"Coder-Session-Token": client.session}
        ws = await session.ws_connect(url, headers=token)
        await ws.close()


async def test_revoke_tokens_command_closes_open_sockets_at_once(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    cli_token = await user_with_password(control_plane, "alice")
    agents = await control_plane.create_workspace("alice", "dev")
    agent_id, _ = agents["main"]
    client = await web_client()
    await client.sign_in("alice")
    url = control_plane.url.replace("http", "ws") + f"/api/v2/workspaceagents/{agent_id}/coordinate"
    async with aiohttp.ClientSession() as session:
        browser = await session.ws_connect(
            url,
            headers={"Cookie": f"coder_session_token={client.session}", "Origin": client.origin},
        )
        cli = await session.ws_connect(url, headers={"Coder-Session-Token": cli_token})
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "wsagent",
                "admin",
                "--data-dir",
                str(control_plane.config.data_dir),
                "--json",
                "user",
                "revoke-tokens",
                "alice",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert '"revoked": 2' in done.stdout
        for ws in (browser, cli):
            message = await asyncio.wait_for(ws.receive(), 10)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == 1008 and message.extra == "session revoked"
    async with control_plane.http(cli_token) as stale:
        assert (await stale.get("/api/v2/users/me")).status_code == 401


async def test_password_commands(control_plane: ControlPlane, web_client: MakeClient) -> None:
    data_dir = str(control_plane.config.data_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def admin(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wsagent", "admin", "--data-dir", data_dir, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    created = await asyncio.to_thread(
        admin, "user", "create", "carol", "--password-stdin", stdin="first password\n"
    )
    assert created.returncode == 0, created.stderr
    client = await web_client()
    assert (await client.sign_in("carol", "first password")).status_code == 303
    changed = await asyncio.to_thread(
        admin, "user", "set-password", "carol", stdin="second password\n"
    )
    assert changed.returncode == 0, changed.stderr
    later = await web_client()
    assert (await later.sign_in("carol", "first password")).status_code == 401
    assert (await later.sign_in("carol", "second password")).status_code == 303
    short = await asyncio.to_thread(admin, "user", "set-password", "carol", stdin="short\n")
    assert short.returncode == 1 and "at least 8" in short.stderr
    unknown = await asyncio.to_thread(admin, "user", "revoke-tokens", "nobody")
    assert unknown.returncode == 1 and "not found" in unknown.stderr


async def test_terminal_page_is_the_owners_only(
    control_plane: ControlPlane, web_client: MakeClient
) -> None:
    await user_with_password(control_plane, "alice")
    await user_with_password(control_plane, "bob")
    agents = await control_plane.create_workspace("alice", "dev")
    agent_id, _ = agents["main"]
    alice, bob = await web_client(), await web_client()
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    page = await alice.http.get("/@alice/dev.main/terminal")
    assert page.status_code == 200
    assert f'data-pty="/api/v2/workspaceagents/{agent_id}/pty"' in page.text
    assert "/static/terminal.js" in page.text
    assert_security_headers(page)
    assert (await alice.http.get("/@alice/dev/terminal")).status_code == 200  # one agent
    for path in ("/@alice/dev.main/terminal", "/@alice/dev.other/terminal", "/@bob/dev/terminal"):
        assert (await bob.http.get(path)).status_code == 404, path
    # A browser gets the 404 as a page, an API client as JSON.
    as_page = await bob.http.get("/@alice/dev.main/terminal", headers={"Accept": "text/html"})
    assert as_page.status_code == 404
    assert_security_headers(as_page)
    as_json = await bob.http.get("/@alice/dev.main/terminal")
    assert as_json.headers["content-type"].startswith("application/json")
    async with control_plane.http() as anonymous:
        response = await anonymous.get("/@alice/dev.main/terminal")
    assert response.status_code == 303


async def test_static_assets_are_served_gzipped(control_plane: ControlPlane) -> None:
    async with control_plane.http() as client:
        js = await client.get("/static/terminal.js", headers={"Accept-Encoding": "gzip"})
        assert js.status_code == 200, "run scripts/setup to build the web assets"
        assert js.headers["content-encoding"] == "gzip"
        assert js.headers["content-type"].startswith("text/javascript") or js.headers[
            "content-type"
        ].startswith("application/javascript")
        assert int(js.headers["content-length"]) < 300 * 1024
        assert (await client.get("/static/../server.py")).status_code == 404
        for missing in (
            "/static/nope.js",
            "/static/",
            "/static/.hidden",
            "/static/a/b.js",
            "/static/..%2Fserver.py",
        ):
            absent = await client.get(missing)
            # Coder's error body, not an empty octet-stream.
            assert absent.status_code == 404, missing
            assert absent.json() == {"message": "Route not found."}, missing


async def test_cookies_are_secure_under_https(
    make_control_plane: Callable[..., Awaitable[ControlPlane]], tmp_path: Path
) -> None:
    ca_file, cert_file, key_file = make_ca_and_server_cert(tmp_path)
    plane = await make_control_plane(tls_cert=cert_file, tls_key=key_file)
    assert plane.url.startswith("https://")
    await user_with_password(plane, "alice")
    verify = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(base_url=plane.url, verify=verify, timeout=15) as http:
        page = await http.get("/login")
        assert "secure" in page.headers["set-cookie"].lower()  # the CSRF cookie
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        signed_in = await http.post(
            "/login",
            data={"csrf": csrf.group(1), "username": "alice", "password": PASSWORD},
            headers={"Origin": plane.url},
        )
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith("coder_session_token=")
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert {"secure", "httponly", "samesite=lax"} <= flags
