"""Agent metadata on the real control plane: posts per key, Coder's caps, coalesced writes,
the agent view and the watch stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from controlplane.metadatabatch import METADATA
from tests.e2e.controlplane.conftest import AGENTS, ME, World, assert_error, make_world

pytestmark = pytest.mark.e2e

AGENT: dict[str, Any] = {
    "name": "main",
    "metadata": [
        {"key": "load", "display_name": "Load", "script": "cat /proc/loadavg", "interval": 10},
        {"key": "cpu", "script": "wsagent stat cpu", "interval": 5, "timeout": 2},
    ],
}


def result(value: str, error: str = "", age: int = 0) -> dict[str, Any]:
    return {"collected_at": "2023-05-01T12:00:00Z", "age": age, "value": value, "error": error}


@pytest.fixture
async def mworld(control_plane: Any) -> World:
    return await make_world(control_plane, AGENT)


async def test_descriptions_reach_the_agent(mworld: World) -> None:
    async with mworld.agent() as client:
        body = (await client.get(f"{ME}/metadata")).json()
    assert body["metadata"] == [
        {
            "display_name": "Load",
            "key": "load",
            "script": "cat /proc/loadavg",
            "interval": 10,
            "timeout": 0,
        },
        {
            "display_name": "cpu",
            "key": "cpu",
            "script": "wsagent stat cpu",
            "interval": 5,
            "timeout": 2,
        },
    ]


async def test_latest_value_per_key_in_the_agent_view(mworld: World) -> None:
    view = await mworld.agent_json()
    assert [m["description"]["key"] for m in view["metadata"]] == ["cpu", "load"]
    assert view["metadata"][0]["result"] == {
        "collected_at": "0001-01-01T00:00:00Z",
        "age": 0,
        "value": "",
        "error": "",
    }
    async with mworld.agent() as client:
        for value in ("0.1", "0.2", "0.3"):
            response = await client.post(f"{ME}/metadata/load", json=result(value))
            assert response.status_code == 204 and response.content == b""
        response = await client.post(f"{ME}/metadata/cpu", json=result("", "boom", age=3))
        assert response.status_code == 204
    view = await mworld.agent_json()
    by_key = {m["description"]["key"]: m["result"] for m in view["metadata"]}
    assert by_key["load"]["value"] == "0.3" and by_key["load"]["error"] == ""
    assert by_key["cpu"]["error"] == "boom" and by_key["cpu"]["age"] >= 3


async def test_posts_in_one_tick_are_one_write(mworld: World) -> None:
    batcher = mworld.cp.app[METADATA]
    # A tick longer than the test (a loaded machine must not split the posts over two).
    batcher.interval = 3600
    await batcher.flush()
    writes = batcher.writes
    async with mworld.agent() as client:
        for i in range(20):
            await client.post(f"{ME}/metadata/load", json=result(str(i)))
            await client.post(f"{ME}/metadata/cpu", json=result(str(-i)))
    await batcher.flush()
    assert batcher.writes == writes + 1
    stored = {r.key: r.value for r in await mworld.cp.store.list_agent_metadata(mworld.agent_id)}
    assert stored == {"load": "19", "cpu": "-19"}


async def test_coder_caps_and_bad_input(mworld: World) -> None:
    async with mworld.agent() as client:
        big = await client.post(f"{ME}/metadata/load", json=result("x" * 5000))
        big_error = await client.post(f"{ME}/metadata/cpu", json=result("", "e" * 3000))
        unknown = await client.post(f"{ME}/metadata/nope", json=result("1"))
        bad = await client.post(f"{ME}/metadata/load", json={"age": "old"})
        negative = await client.post(f"{ME}/metadata/load", json=result("1", age=-1))
    assert big.status_code == 204 and big_error.status_code == 204
    assert_error(unknown, 404, "Unknown metadata key.")
    assert_error(bad, 400)
    assert_error(negative, 400)
    view = await mworld.agent_json()
    by_key = {m["description"]["key"]: m["result"] for m in view["metadata"]}
    assert by_key["load"]["value"] == "x" * 2048
    assert by_key["load"]["error"] == "value of 5000 bytes exceeded 2048 bytes"
    assert by_key["cpu"]["error"] == "error of 3000 bytes exceeded 2048 bytes"


async def test_spec_errors_are_clear(control_plane: Any) -> None:
    from controlplane.admin import SpecError, agent_spec

    for metadata, message in (
        ([{"key": "a b", "script": "x"}], "key"),
        ([{"key": "a", "script": "x"}, {"key": "a", "script": "y"}], "twice"),
        ([{"key": "a", "script": "x", "interval": -1}], "interval"),
        ([{"key": "a", "script": "x", "intervall": 1}], "intervall"),
    ):
        with pytest.raises(SpecError, match=message):
            agent_spec({"name": "main", "metadata": metadata})


async def test_watch_streams_changes_as_server_sent_events(mworld: World) -> None:
    url = f"{mworld.cp.url}{AGENTS}/{mworld.agent_id}/watch-metadata"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Coder-Session-Token": mworld.owner_token}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")

        async def next_event() -> list[dict[str, Any]]:
            lines: list[str] = []
            while True:
                line = (await asyncio.wait_for(response.content.readline(), 10)).decode()
                if line == "\n" and lines:
                    break
                lines.append(line.rstrip("\n"))
            assert lines[0] == "event: data"
            data: list[dict[str, Any]] = json.loads(lines[1].removeprefix("data: "))
            return data

        first = await next_event()
        assert [m["description"]["key"] for m in first] == ["cpu", "load"]
        loop = asyncio.get_running_loop()
        async with mworld.agent() as client:
            await client.post(f"{ME}/metadata/load", json=result("9.9"))
            sent = loop.time()
        changed = await next_event()
        assert loop.time() - sent < 2.0
        assert {m["description"]["key"]: m["result"]["value"] for m in changed}["load"] == "9.9"
    async with mworld.user(mworld.other_token) as other:
        assert_error(await other.get(f"{AGENTS}/{mworld.agent_id}/watch-metadata"), 404)
