"""Bad input gets Coder-shaped JSON errors, never HTML or a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.controlplane.conftest import AGENTS, ME, World, assert_error

pytestmark = pytest.mark.e2e

POSTS = [f"{ME}/startup", f"{ME}/report-lifecycle", f"{ME}/app-health", f"{ME}/report-stats"]


@pytest.mark.parametrize("path", POSTS)
async def test_body_over_the_cap_is_413(world_factory: Any, path: str) -> None:
    w: World = await world_factory(max_body_bytes=4096)
    big = b'{"version": "' + b"x" * 5000 + b'"}'
    async with w.agent() as client:
        response = await client.post(
            path, content=big, headers={"Content-Type": "application/json"}
        )
    assert_error(response, 413)


async def test_body_over_the_cap_without_content_length_is_413(world_factory: Any) -> None:
    w: World = await world_factory(max_body_bytes=4096)

    async def chunks() -> Any:
        yield b'{"rx_bytes": 1, "pad": "'
        for _ in range(10):
            yield b"y" * 1024
        yield b'"}'

    async with w.agent() as client:
        response = await client.post(f"{ME}/report-stats", content=chunks())
    assert_error(response, 413)
    assert await w.cp.store.list_stats(w.agent_id) == []


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "body", [b"{", b"", b"not json", b'{"a": 1} trailing', b"\xff\xfe", b'{"x": NaN}']
)
async def test_malformed_json_is_400(world: World, path: str, body: bytes) -> None:
    async with world.agent() as client:
        response = await client.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
    error = assert_error(response, 400, "Request body must be valid JSON.")
    assert error["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (f"{ME}/report-stats", {"rx_bytes": "many"}, "rx_bytes"),
        (f"{ME}/report-stats", {"conns_by_proto": {"ssh": "one"}}, "conns_by_proto.ssh"),
        (f"{ME}/report-lifecycle", {"state": 7}, "state"),
        (f"{ME}/startup", {"version": None}, "version"),
        (f"{ME}/app-health", {"Healths": {"x": 1}}, "Healths.x"),
        (f"{ME}/report-stats", [1, 2], "body"),
    ],
)
async def test_wrongly_typed_fields_are_400_with_validations(
    world: World, path: str, body: Any, field: str
) -> None:
    async with world.agent() as client:
        response = await client.post(path, json=body)
    error = assert_error(response, 400, "Validation failed.")
    assert [v["field"] for v in error["validations"]] == [field]


async def test_unknown_fields_are_ignored(world: World) -> None:
    async with world.agent() as client:
        startup = {"version": "v1.0.0", "expanded_directory": "/w", "subsystem": "envbox", "x": [1]}
        assert (await client.post(f"{ME}/startup", json=startup)).status_code == 200
        lifecycle = {"state": "ready", "changed_at": "2023-01-01T00:00:00Z"}
        assert (await client.post(f"{ME}/report-lifecycle", json=lifecycle)).status_code == 204
        stats = {"rx_bytes": 1, "session_count_vscode": 3, "connection_median_latency_ms": 1.5}
        assert (await client.post(f"{ME}/report-stats", json=stats)).status_code == 200
    body = await world.agent_json()
    assert (body["version"], body["lifecycle_state"]) == ("v1.0.0", "ready")


async def test_field_names_match_case_insensitively(world: World) -> None:
    async with world.agent() as client:
        response = await client.post(f"{ME}/report-lifecycle", json={"State": "starting"})
    assert response.status_code == 204
    assert (await world.agent_json())["lifecycle_state"] == "starting"


@pytest.mark.parametrize("suffix", ["", "/connection", "/coordinate", "/listening-ports", "/pty"])
@pytest.mark.parametrize("bad", ["not-a-uuid", "1234", "6a1c2bdb-8a3b-4d4e-9b8f-6f1a4c1f2f3"])
async def test_invalid_uuid_is_400(world: World, suffix: str, bad: str) -> None:
    async with world.user() as client:
        response = await client.get(f"{AGENTS}/{bad}{suffix}")
    error = assert_error(response, 400)
    assert bad in error["message"]
    assert error["validations"][0]["field"] == "workspaceagent"


def _one_letter_upper(agent_id: str) -> str:
    # The first hex letter, not the first 8 characters: those may all be digits.
    index = next(n for n, c in enumerate(agent_id) if c in "abcdef")
    return agent_id[:index] + agent_id[index].upper() + agent_id[index + 1 :]


@pytest.mark.parametrize("suffix", ["", "/connection", "/listening-ports", "/pty"])
@pytest.mark.parametrize(
    "spelling",
    [
        str.upper,
        lambda i: f"urn:uuid:{i}",
        lambda i: i.replace("-", ""),
        lambda i: _one_letter_upper(i),
    ],
)
async def test_other_spellings_of_an_agent_id_are_400(
    world: World, suffix: str, spelling: Any
) -> None:
    """Only the canonical lower-case 36-character id names the agent."""
    bad = spelling(world.agent_id)
    assert bad != world.agent_id
    async with world.user() as client:
        assert (await client.get(f"{AGENTS}/{world.agent_id}")).status_code == 200
        response = await client.get(f"{AGENTS}/{bad}{suffix}")
    error = assert_error(response, 400)
    assert bad in error["message"]
    assert error["validations"] == [{"field": "workspaceagent", "detail": "invalid UUID"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"{ME}/startup", '{"version":"v1\\ud800"}'),
        (f"{ME}/startup", '{"version":"v1.0.0","expanded_directory":"/w/\\udfff"}'),
        (f"{ME}/report-lifecycle", '{"state":"ready\\ud800"}'),
        (f"{ME}/app-health", '{"Healths":{"\\ud800":"healthy"}}'),
        (f"{ME}/report-stats", '{"conns_by_proto":{"ssh\\udbff":1}}'),
        ("/api/v2/workspaceagents/aws-instance-identity", '{"signature":"\\ud800","document":"x"}'),
    ],
)
async def test_lone_surrogates_are_400_not_500(world: World, path: str, body: str) -> None:
    """A ``\\ud800`` escape decodes to a string with no UTF-8 form: refused while decoding."""
    async with world.agent() as client:
        response = await client.post(
            path, content=body.encode(), headers={"Content-Type": "application/json"}
        )
        error = assert_error(response, 400, "Request body must be valid JSON.")
        assert "surrogate" in error["detail"]
        # A surrogate pair is one valid character, and an escaped backslash is no escape.
        ok = await client.post(
            f"{ME}/startup",
            content=b'{"version":"v1.0.0","expanded_directory":"/w/\\ud83d\\ude00\\\\ud800"}',
            headers={"Content-Type": "application/json"},
        )
    assert ok.status_code == 200, ok.text
    assert (await world.agent_json())["expanded_directory"] == "/w/\U0001f600\\ud800"


async def test_unknown_agent_is_404(world: World) -> None:
    async with world.user() as client:
        response = await client.get(f"{AGENTS}/6a1c2bdb-8a3b-4d4e-9b8f-6f1a4c1f2f3e")
    assert_error(response, 404, "Resource not found or you do not have access to this resource")


# "/" is the dashboard now (tests/web); every other unknown path stays a JSON 404.
@pytest.mark.parametrize(
    "path", ["/api/v2/nope", f"{ME}/nope", f"{AGENTS}/x/y/z", "/favicon.ico", "/nope"]
)
async def test_unknown_routes_are_json_404(world: World, path: str) -> None:
    async with world.user() as client:
        response = await client.get(path)
    assert_error(response, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"{ME}/metadata"),
        ("GET", f"{ME}/report-stats"),
        ("PUT", f"{ME}/startup"),
        ("DELETE", f"{AGENTS}/6a1c2bdb-8a3b-4d4e-9b8f-6f1a4c1f2f3e"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method_is_json_405(world: World, method: str, path: str) -> None:
    async with world.agent() as client:
        response = await client.request(method, path)
    assert_error(response, 405)
    assert "allow" in {k.lower() for k in response.headers}


async def test_errors_never_leak_a_traceback(world: World) -> None:
    """An unexpected failure inside a handler is a 500 JSON body with no internals."""
    await world.cp.store.close()  # every store call now fails
    async with world.agent() as client:
        response = await client.get(f"{ME}/metadata")
    body = assert_error(response, 500)
    assert "Traceback" not in response.text and "sqlite" not in response.text.lower()
    assert body["message"]


async def test_raw_garbage_request_line_is_not_answered_with_html(world: World) -> None:
    host, port = "127.0.0.1", world.cp.config.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nContent-Length: nope\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    # aiohttp answers framing errors itself, before any handler: plain text, never HTML.
    assert head.startswith(b"HTTP/1.0 400") or head.startswith(b"HTTP/1.1 400"), head[:200]
    assert b"<html" not in head.lower() and b"Traceback" not in head


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("aws", {"document": "{}"}, "signature"),
        ("aws", {"signature": "c2ln"}, "document"),
        ("azure", {"signature": "c2ln"}, "encoding"),
        ("google", {}, "json_web_token"),
    ],
)
async def test_missing_required_field_is_400_with_validations(
    world: World, kind: str, body: dict[str, str], field: str
) -> None:
    async with world.agent("") as client:
        response = await client.post(f"{AGENTS}/{kind}-instance-identity", json=body)
    error = assert_error(response, 400, "Validation failed.")
    assert error["validations"] == [
        {"field": field, "detail": 'Validation failed for tag "required" with value: ""'}
    ]
