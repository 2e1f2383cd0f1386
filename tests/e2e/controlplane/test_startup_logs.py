"""Streamed startup logs on the real control plane: append, de-duplicated retries, the
1 MiB cap, reads by id, and the follow WebSocket."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from controlplane import startuplogs
from tests.e2e.controlplane.conftest import AGENTS, ME, World, assert_error

pytestmark = pytest.mark.e2e

NOW = "2023-05-01T12:00:00.5Z"


def lines(*texts: str, level: str = "info") -> dict[str, Any]:
    return {"logs": [{"created_at": NOW, "output": t, "level": level} for t in texts]}


def stream_headers(stream: str, seq: int) -> dict[str, str]:
    return {"Wsagent-Log-Stream": stream, "Wsagent-Log-Seq": str(seq)}


async def read_logs(world: World, query: str = "") -> list[dict[str, Any]]:
    async with world.user() as client:
        response = await client.get(f"{AGENTS}/{world.agent_id}/startup-logs{query}")
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return body


async def test_lines_are_stored_in_order_and_counted(world: World) -> None:
    async with world.agent() as client:
        r1 = await client.patch(f"{ME}/startup-logs", json=lines("one", "two"))
        r2 = await client.patch(f"{ME}/startup-logs", json=lines("three", level="error"))
    assert (r1.status_code, r1.text) == (200, "null\n")
    assert r2.status_code == 200
    logs = await read_logs(world)
    assert [entry["output"] for entry in logs] == ["one", "two", "three"]
    assert [entry["level"] for entry in logs] == ["info", "info", "error"]
    assert set(logs[0]) == {"id", "created_at", "output", "level"}
    assert logs[0]["created_at"] == "2023-05-01T12:00:00.500000Z"
    ids = [entry["id"] for entry in logs]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [e["output"] for e in await read_logs(world, f"?after={ids[0]}")] == ["two", "three"]
    assert [e["output"] for e in await read_logs(world, f"?before={ids[2]}")] == ["one", "two"]
    body = await world.agent_json()
    assert body["startup_logs_length"] == len("onetwothree")
    assert body["startup_logs_overflowed"] is False


async def test_a_missing_level_is_info(world: World) -> None:
    async with world.agent() as client:
        response = await client.patch(
            f"{ME}/startup-logs", json={"logs": [{"created_at": NOW, "output": "x"}]}
        )
    assert response.status_code == 200
    assert (await read_logs(world))[0]["level"] == "info"


async def test_a_retried_batch_is_stored_once(world: World) -> None:
    stream = "5b0c7d3e-7f0a-4b8e-9a53-0d5c3e2f1a10"
    async with world.agent() as client:
        for body, seq in (
            (lines("a", "b"), 0),
            (lines("a", "b"), 0),  # the 200 was lost: the agent sends it again
            (lines("b", "c"), 1),  # overlapping retry
            (lines("d"), 3),
        ):
            response = await client.patch(
                f"{ME}/startup-logs", json=body, headers=stream_headers(stream, seq)
            )
            assert response.status_code == 200, response.text
        # A new script run (new stream) numbers from 0 again and is kept.
        response = await client.patch(
            f"{ME}/startup-logs", json=lines("again"), headers=stream_headers("other-run", 0)
        )
        assert response.status_code == 200
    assert [e["output"] for e in await read_logs(world)] == ["a", "b", "c", "d", "again"]
    assert (await world.agent_json())["startup_logs_length"] == len("abcdagain")


async def test_the_cap_sets_overflowed_and_refuses_more(world: World) -> None:
    chunk = "x" * 1000
    async with world.agent() as client:
        statuses = []
        for _ in range(11):  # 11 x 100 lines x 1000 bytes > 1 MiB
            response = await client.patch(f"{ME}/startup-logs", json=lines(*[chunk] * 100))
            statuses.append(response.status_code)
            if response.status_code == 413:
                assert_error(response, 413, "Startup logs limit exceeded")
        later = await client.patch(f"{ME}/startup-logs", json=lines("late"))
    assert statuses[:10] == [200] * 10 and statuses[10] == 413
    assert_error(later, 413, "Startup logs limit exceeded")
    body = await world.agent_json()
    assert body["startup_logs_overflowed"] is True
    # Whole lines that fit are kept: 1048 lines of 1000 bytes.
    assert body["startup_logs_length"] == (1 << 20) // 1000 * 1000
    stored = await read_logs(world)
    assert len(stored) == (1 << 20) // 1000
    assert all(e["output"] != "late" for e in stored)


async def test_bad_input_gets_coder_errors(world: World) -> None:
    async with world.agent() as client:
        empty = await client.patch(f"{ME}/startup-logs", json={"logs": []})
        level = await client.patch(f"{ME}/startup-logs", json=lines("x", level="loud"))
        not_json = await client.patch(
            f"{ME}/startup-logs", content=b"{", headers={"Content-Type": "application/json"}
        )
        bad_seq = await client.patch(
            f"{ME}/startup-logs", json=lines("x"), headers=stream_headers("s", -1)
        )
    async with world.cp.http() as anonymous:
        unauthenticated = await anonymous.patch(f"{ME}/startup-logs", json=lines("x"))
    assert_error(empty, 400, "No logs provided.")
    assert assert_error(level, 400, "Invalid log level provided.")["detail"] == (
        'invalid log level: "loud"'
    )
    assert_error(not_json, 400, "Request body must be valid JSON.")
    assert_error(bad_seq, 400, "Invalid log stream headers.")
    assert_error(unauthenticated, 401)
    async with world.user() as client:
        after = await client.get(f"{AGENTS}/{world.agent_id}/startup-logs?after=-1")
    body = assert_error(after, 400)
    assert body["validations"][0]["field"] == "after"
    async with world.user(world.other_token) as client:
        other = await client.get(f"{AGENTS}/{world.agent_id}/startup-logs")
    assert_error(other, 404)
    assert await read_logs(world) == []


async def test_follow_streams_new_lines_as_they_arrive(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the wake-up on a new line can deliver it (the periodic re-read, every 5 s, is out
    # of reach), so the deadline can allow a loaded machine.
    monkeypatch.setattr(startuplogs, "RECHECK_INTERVAL", 3600.0)
    async with world.agent() as client:
        await client.patch(f"{ME}/startup-logs", json=lines("before"))
    url = world.cp.url.replace("http", "ws", 1) + f"{AGENTS}/{world.agent_id}/startup-logs"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url + "?follow", headers={"Coder-Session-Token": world.owner_token}
        ) as ws,
    ):
        first = json.loads(await ws.receive_str(timeout=5))
        assert [e["output"] for e in first] == ["before"]
        async with world.agent() as client:
            await client.patch(f"{ME}/startup-logs", json=lines("after 1", "after 2"))
        message = await ws.receive_str(timeout=5)
        assert message.endswith("\n")
        assert [e["output"] for e in json.loads(message)] == ["after 1", "after 2"]
        assert json.loads(message)[0]["id"] > first[0]["id"]


async def test_follow_after_skips_what_the_reader_has(world: World) -> None:
    async with world.agent() as client:
        await client.patch(f"{ME}/startup-logs", json=lines("one", "two"))
    seen = await read_logs(world)
    url = world.cp.url.replace("http", "ws", 1) + f"{AGENTS}/{world.agent_id}/startup-logs"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{url}?follow&after={seen[0]['id']}",
            headers={"Coder-Session-Token": world.owner_token},
        ) as ws,
    ):
        first = json.loads(await ws.receive_str(timeout=5))
    assert [e["output"] for e in first] == ["two"]
