"""The first metadata request, sent before the rest of the agent is imported, against a
real HTTP server on loopback: the first attempt takes its answer, later ones ask anew."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from agent.config import AgentConfig
from agent.errors import ApiError
from agent.firstrequest import FirstRequest
from agent.sdk.models import Metadata

pytestmark = pytest.mark.e2e

METADATA = "/api/v2/workspaceagents/me/metadata"
TOKEN = "t" * 36

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def config(url: str, tmp_path: Path, auth: str = "token") -> AgentConfig:
    token = TOKEN if auth == "token" else ""
    return AgentConfig(url=url, auth=auth, token=token, log_dir=tmp_path)


async def test_sent_returns_while_the_answer_is_still_pending(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    arrived = asyncio.Event()
    release = asyncio.Event()
    tokens: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        tokens.append(request.headers.get("Coder-Session-Token", ""))
        arrived.set()
        if len(tokens) == 1:
            await release.wait()
        return web.json_response(Metadata(directory=f"/seen/{len(tokens)}").to_json())

    first = FirstRequest(config(await serve(handler), tmp_path))
    try:
        first.send()
        async with asyncio.timeout(10):
            await first.sent()
            await arrived.wait()  # the server has it (or is about to: same loop)
        assert tokens == [TOKEN]
        release.set()
        async with asyncio.timeout(10):
            taken = await first.fetch_metadata()
            assert taken.directory == "/seen/1"  # the answer to the request sent ahead
            again = await first.fetch_metadata()
        assert again.directory == "/seen/2"  # a later attempt asks anew
        assert tokens == [TOKEN, TOKEN]
    finally:
        first.discard()
        await first.client.aclose()


async def test_a_failed_request_sent_ahead_fails_the_first_attempt_only(  # type: ignore[no-untyped-def]
    serve, tmp_path: Path
) -> None:
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == 1:
            return web.json_response({"message": "not yet"}, status=503)
        return web.json_response(Metadata().to_json())

    first = FirstRequest(config(await serve(handler), tmp_path))
    try:
        first.send()
        async with asyncio.timeout(10):
            await first.sent()
            with pytest.raises(ApiError) as info:
                await first.fetch_metadata()
            assert info.value.status == 503
            assert isinstance(await first.fetch_metadata(), Metadata)
        assert len(calls) == 2
    finally:
        await first.client.aclose()


async def test_discard_drops_a_request_no_attempt_took(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    never = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == 1:
            await never.wait()
        return web.json_response(Metadata().to_json())

    first = FirstRequest(config(await serve(handler), tmp_path))
    try:
        first.send()
        async with asyncio.timeout(10):
            await first.sent()
        first.discard()  # shutdown before the loop's first attempt
        async with asyncio.timeout(10):
            assert isinstance(await first.fetch_metadata(), Metadata)  # not the dropped one
        assert len(calls) == 2
    finally:
        first.discard()
        await first.client.aclose()


async def test_identity_auth_sends_nothing_ahead(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response(Metadata().to_json())

    first = FirstRequest(config(await serve(handler), tmp_path, auth="aws-instance-identity"))
    try:
        first.send()
        async with asyncio.timeout(10):
            await first.sent()  # nothing to wait for
            await first.fetch_metadata()  # the loop's own request, after the exchange
        assert len(calls) == 1
    finally:
        await first.client.aclose()


def test_the_path_to_the_first_request_imports_no_wire_models_nor_components() -> None:
    """What ``wsagent agent`` imports before sending (checked in a fresh interpreter):
    the configuration and the client; not the logs, the endpoints' models or the parts."""
    script = """
import sys
import agent.cli, agent.firstrequest
loaded = sorted(m for m in sys.modules if m.startswith("agent."))
late = ("agent.sdk.models", "agent.sdk.extensions", "agent.compose", "agent.connection",
        "agent.daemon", "agent.coordinator", "agent.ssh", "websockets", "structlog", "argparse",
        "agent.sdk.startuplogs", "uuid")
early = [m for m in late if m in sys.modules]
assert not early, (early, loaded)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
