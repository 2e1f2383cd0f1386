"""agent.client against real HTTP servers on loopback: typed errors, headers, deadlines, caps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from agent.client import MAX_RESPONSE_BYTES, ControlPlaneClient, TokenHolder
from agent.errors import ApiError, DecodeError, TransportError, UnauthorizedError

TOKEN = "5f0d2a4e-9c1b-4a8e-b7f3-2d6c8e1a9b40"
METADATA = "/api/v2/workspaceagents/me/metadata"
MANIFEST = "/api/v2/workspaceagents/me/manifest"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client(url: str, timeout: float = 10.0) -> ControlPlaneClient:
    return ControlPlaneClient(url, TokenHolder(TOKEN), verify=False, timeout=timeout)


@pytest.mark.e2e
async def test_a_server_that_names_it_the_manifest_is_asked_for_that(serve) -> None:  # type: ignore[no-untyped-def]
    # Coder's servers from v0.22 answer the object at /me/manifest and 404 /me/metadata.
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == METADATA:
            return web.json_response({"message": "Route not found."}, status=404)
        return web.json_response(
            {
                "git_auth_configs": 0,
                "vscode_port_proxy_uri": "",
                "apps": [],
                "derpmap": {"Regions": {}},
                "environment_variables": {},
                "startup_script": "echo manifest",
                "startup_script_timeout": 0,
                "directory": "",
                "motd_file": "",
            }
        )

    async with client(await serve(handler, MANIFEST)) as c:
        first = await c.metadata()
        again = await c.metadata()
    assert first.startup_script == again.startup_script == "echo manifest"
    assert seen == [METADATA, MANIFEST, MANIFEST]  # the server's name is remembered


@pytest.mark.e2e
async def test_a_404_on_both_names_is_the_servers_error(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"message": "Route not found."}, status=404)

    async with client(await serve(handler, MANIFEST)) as c:
        with pytest.raises(ApiError) as info:
            await c.metadata()
    assert info.value.status == 404 and info.value.url.endswith("/me/manifest")


@pytest.mark.e2e
async def test_error_body_becomes_a_typed_error_with_status_and_detail(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Coder-Session-Token", ""))
        return web.json_response(
            {
                "message": "Internal error fetching metadata.",
                "detail": "db on fire",
                "validations": [{"field": "x", "detail": "bad"}],
            },
            status=500,
        )

    async with client(await serve(handler)) as c:
        with pytest.raises(ApiError) as info:
            await c.metadata()
    err = info.value
    assert (err.status, err.message, err.detail) == (
        500,
        "Internal error fetching metadata.",
        "db on fire",
    )
    assert err.validations[0].field == "x"
    assert "unexpected status code 500" in str(err)
    assert seen == [TOKEN]


@pytest.mark.e2e
async def test_401_is_unauthorized_and_non_json_errors_keep_their_text(serve) -> None:  # type: ignore[no-untyped-def]
    async def unauthorized(request: web.Request) -> web.Response:
        return web.json_response({"message": "Workspace agent not authorized."}, status=401)

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<h1>bad gateway</h1>", status=502, content_type="text/html")

    async with client(await serve(unauthorized)) as c:
        with pytest.raises(UnauthorizedError):
            await c.metadata()
    async with client(await serve(html)) as c:
        with pytest.raises(ApiError) as info:
            await c.metadata()
    assert info.value.status == 502
    assert "non-JSON" in info.value.message and "bad gateway" in info.value.detail


@pytest.mark.e2e
async def test_wrong_body_is_a_decode_error_naming_the_field(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"apps": 7})

    async with client(await serve(handler)) as c:
        with pytest.raises(DecodeError) as info:
            await c.metadata()
    assert info.value.endpoint.endswith("/me/metadata")


@pytest.mark.e2e
async def test_a_dripping_server_hits_the_total_deadline(serve) -> None:  # type: ignore[no-untyped-def]
    """One byte every 100 ms never trips a per-read timeout; the whole call still ends."""

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b" ")
            await asyncio.sleep(0.1)
        return response

    async with client(await serve(drip), timeout=0.5) as c:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportError, match="timed out"):
            await c.metadata()
        assert loop.time() - started < 2.0


@pytest.mark.e2e
async def test_an_oversized_body_is_refused_not_buffered(serve) -> None:  # type: ignore[no-untyped-def]
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        chunk = b" " * (1 << 20)
        for _ in range(MAX_RESPONSE_BYTES // len(chunk) + 2):
            await response.write(chunk)
        return response

    async with client(await serve(huge)) as c:
        with pytest.raises(TransportError, match="larger than"):
            await c.metadata()


async def test_refused_connection_is_a_transport_error(unused_port_url: str) -> None:
    async with client(unused_port_url) as c:
        with pytest.raises(TransportError) as info:
            await c.metadata()
    assert TOKEN not in str(info.value)
