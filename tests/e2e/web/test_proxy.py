"""The app proxy through the real agent's stream plane: path-based apps and ports, HTTP
streamed both ways, WebSockets, what is forwarded, who gets in, and the error pages."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import pytest

from controlplane.appkeys import COORDINATOR
from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until
from tests.e2e.web.conftest import WebClient, user_with_password
from tests.e2e.web.echo_app import header_map, running_echo_app

pytestmark = pytest.mark.e2e

MakeClient = Callable[[], Awaitable[WebClient]]


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async with running_echo_app() as port:
        yield port


async def _setup(
    plane: ControlPlane,
    start_agent: Callable[..., Awaitable[AgentProcess]],
    tmp_path: Path,
    echo_port: int,
) -> tuple[str, AgentProcess]:
    await user_with_password(plane, "alice")
    await user_with_password(plane, "bob")
    agents = await plane.create_workspace(
        "alice",
        "dev",
        [
            {
                "name": "main",
                "apps": [
                    {"slug": "echo", "url": f"http://127.0.0.1:{echo_port}/base"},
                    {"slug": "sick", "url": f"http://127.0.0.1:{echo_port}/"},
                ],
            }
        ],
    )
    agent_id, token = agents["main"]
    agent = await start_agent(agent_env(plane.url, token, tmp_path / "logs"))
    await poll_until(lambda: plane.app[COORDINATOR].is_connected(agent_id), 20)
    return agent_id, agent


async def test_app_and_port_proxy(
    control_plane: ControlPlane,
    web_client: MakeClient,
    start_agent: Callable[..., Awaitable[AgentProcess]],
    tmp_path: Path,
    echo_port: int,
) -> None:
    agent_id, agent = await _setup(control_plane, start_agent, tmp_path, echo_port)
    alice, bob = await web_client(), await web_client()
    await alice.sign_in("alice")
    await bob.sign_in("bob")
    base = "/@alice/dev.main"
    alice.http.cookies.set("theme", "dark")

    bare = await alice.http.get(f"{base}/apps/echo?x=1")
    assert bare.status_code == 308 and bare.headers["location"] == f"{base}/apps/echo/?x=1"
    page = await alice.http.get(f"{base}/apps/echo/sub/page?x=1&coder_session_token=zz")
    assert page.status_code == 200 and "echo app" in page.text
    assert '<code id="path">/base/sub/page?x=1</code>' in page.text
    assert "content-security-policy" not in page.headers  # the app's page, the app's policy

    seen = header_map(
        (
            await alice.http.get(
                f"{base}/apps/echo/headers", headers={"Coder-Session-Token": alice.session}
            )
        ).text
    )
    assert "coder-session-token" not in seen
    assert "coder_session_token" not in seen.get("cookie", "")
    assert "wsagent_csrf" not in seen.get("cookie", "")
    assert "theme=dark" in seen["cookie"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == seen["host"]
    assert alice.session not in str(seen)

    # Bodies stream both ways (a chunked upload, a large download).
    async def body() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"u" * 65536

    uploaded = await alice.http.post(
        f"{base}/ports/{echo_port}/upload", content=body(), headers={"Origin": alice.origin}
    )
    assert uploaded.status_code == 200 and uploaded.json() == {"received": 80 * 65536}
    big = await alice.http.get(f"{base}/ports/{echo_port}/bytes?n={8 << 20}&length=1")
    assert big.status_code == 200 and len(big.content) == 8 << 20
    chunked = await alice.http.get(f"{base}/ports/{echo_port}/bytes?n=1000000")
    assert len(chunked.content) == 1_000_000
    head = await alice.http.head(f"{base}/ports/{echo_port}/bytes?n=5000&length=1")
    assert head.status_code == 200 and head.content == b""
    # An app that dies in the middle of a body of known length: the browser's download
    # fails rather than ending early as if complete.
    with pytest.raises(httpx.RemoteProtocolError):
        await alice.http.get(f"{base}/ports/{echo_port}/bytes?n={4 << 20}&length=1&cut=1")

    # WebSockets: echoed, with the subprotocol; the cookie needs our origin.
    ws_url = control_plane.url.replace("http", "ws") + f"{base}/apps/echo/ws"
    cookie = {"Cookie": f"coder_session_token={alice.session}"}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            ws_url, headers={**cookie, "Origin": alice.origin}, protocols=("echo.v1",)
        ) as ws:
            assert ws.protocol == "echo.v1"
            await ws.send_str("hello")
            assert (await asyncio.wait_for(ws.receive(), 10)).data == "echo:hello"
            await ws.send_bytes(b"\x00\x01" * 40000)
            assert (await asyncio.wait_for(ws.receive(), 10)).data == b"\x00\x01" * 40000
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(ws_url, headers={**cookie, "Origin": "https://evil.example"})
        assert refused.value.status == 403
        evil = await alice.http.post(
            f"{base}/ports/{echo_port}/upload",
            content=b"x",
            headers={"Origin": "https://evil.example"},
        )
        assert evil.status_code == 403

    # Only the owner: bob gets 404 for every form.
    for path in (f"{base}/apps/echo/", f"{base}/ports/{echo_port}/", "/@alice/dev/apps/echo/"):
        assert (await bob.http.get(path)).status_code == 404, path
    anonymous = await web_client()
    login = await anonymous.http.get(f"{base}/apps/echo/", headers={"Accept": "text/html"})
    assert login.status_code == 303 and login.headers["location"].startswith("/login?return_to=")

    # Error pages.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused_page = await alice.http.get(f"{base}/ports/{closed_port}/")
    assert refused_page.status_code == 502 and "Connection refused" in refused_page.text
    assert refused_page.headers["x-frame-options"] == "DENY"
    await control_plane.store.set_app_healths(
        agent_id,
        {
            a.id: "unhealthy"
            for a in await control_plane.store.list_apps(agent_id)
            if a.spec.slug == "sick"
        },
    )
    sick = await alice.http.get(f"{base}/apps/sick/")
    assert sick.status_code == 502 and "App unhealthy" in sick.text
    await agent.terminate()
    offline = await alice.http.get(f"{base}/apps/echo/")
    assert offline.status_code == 502 and "offline" in offline.text


async def test_subdomain_forms_with_a_wildcard_access_url(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    start_agent: Callable[..., Awaitable[AgentProcess]],
    tmp_path: Path,
    echo_port: int,
) -> None:
    plane = await make_control_plane(wildcard_access_url="*.apps.test")
    await _setup(plane, start_agent, tmp_path, echo_port)
    alice, bob = WebClient(plane), WebClient(plane)
    try:
        await alice.sign_in("alice")
        await bob.sign_in("bob")
        app_host = f"echo--main--dev--alice.apps.test:{plane.config.port}"
        port_host = f"{echo_port}--main--dev--alice.apps.test:{plane.config.port}"
        html = {"Accept": "text/html"}
        async with httpx.AsyncClient(base_url=plane.url, timeout=15) as raw:
            first = await raw.get("/x?y=1", headers={**html, "Host": app_host})
            assert first.status_code == 303
            assert first.headers["location"].startswith(f"{plane.url}/apps-auth?redirect=")
            minted = await alice.http.get(first.headers["location"].removeprefix(plane.url))
            assert minted.status_code == 303
            back = minted.headers["location"]
            assert back.startswith(f"http://{app_host}/.wsagent/app-auth?token=")
            accepted = await raw.get(back.split(app_host, 1)[1], headers={"Host": app_host})
            assert accepted.status_code == 303 and accepted.headers["location"] == "/x?y=1"
            cookie = accepted.headers["set-cookie"]
            assert cookie.startswith("wsagent_app_token=") and "HttpOnly" in cookie
            assert "SameSite=Lax" in cookie
            app_cookie = {"Cookie": cookie.split(";", 1)[0] + "; theme=dark"}
            raw.cookies.clear()  # sent by hand below, per host

            page = await raw.get("/x?y=1", headers={"Host": app_host, **app_cookie})
            assert page.status_code == 200 and '<code id="path">/base/x?y=1</code>' in page.text
            seen = header_map(
                (await raw.get("/headers", headers={"Host": port_host, **app_cookie})).text
            )
            assert seen["cookie"] == "theme=dark" and seen["host"] == port_host
            assert seen["x-forwarded-host"] == port_host

            # Another user's session opens nothing of alice's; another host's origin cannot
            # use the app cookie for a WebSocket or a post.
            bobs = {"Coder-Session-Token": bob.session}
            assert (await raw.get("/", headers={"Host": app_host, **bobs})).status_code == 404
            denied = await bob.http.get(first.headers["location"].removeprefix(plane.url))
            assert denied.status_code == 404
            evil = await raw.post(
                "/upload",
                content=b"x",
                headers={"Host": port_host, **app_cookie, "Origin": f"http://{app_host}"},
            )
            assert evil.status_code == 403
            own = await raw.post(
                "/upload",
                content=b"x",
                headers={"Host": port_host, **app_cookie, "Origin": f"http://{port_host}"},
            )
            assert own.status_code == 200 and own.json() == {"received": 1}

        # The app's WebSocket on its own origin; it closes when alice's sessions are revoked.
        ws_url = plane.url.replace("http", "ws") + "/ws"
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                ws_url,
                headers={"Host": app_host, **app_cookie, "Origin": f"http://{app_host}"},
            )
            await ws.send_str("hi")
            assert (await asyncio.wait_for(ws.receive(), 10)).data == "echo:hi"
            user = await plane.store.get_user_by_name("alice")
            await plane.store.revoke_user_tokens(user.id)
            closed = await asyncio.wait_for(ws.receive(), 10)
            assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1008
            await ws.close()
    finally:
        await alice.http.aclose()
        await bob.http.aclose()
