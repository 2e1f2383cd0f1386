"""Tokens are cached (controlplane.store.tokencache), and a cached token still stops
working the moment it is revoked, by this server or by another process (``wsagent admin``),
on both stores; a revoked token's socket and an outdated build's socket still close."""

from __future__ import annotations

import pytest

from controlplane.store.records import AgentSpec
from tests.conftest import poll_until
from tests.e2e.controlplane.cli import Where, admin
from tests.e2e.controlplane.conftest import ME, World, assert_error
from tests.e2e.controlplane.test_coordinate import as_agent, close_frame_code

pytestmark = pytest.mark.e2e


def _where(world: World) -> Where:
    return Where(world.cp.config.data_dir, world.cp.config.database_url)


async def test_an_agent_token_revoked_by_another_process_is_refused_at_once(
    world: World,
) -> None:
    async with world.agent() as client:
        for _ in range(2):  # the second is a cache hit
            assert (await client.get(f"{ME}/metadata")).status_code == 200
        assert len(world.cp.store.auth_cache.agents) == 1, "the token was not cached"
        revoked = await admin(_where(world), "agent", "revoke-tokens", world.agent_id)
        assert revoked["revoked"] == 1
        assert_error(await client.get(f"{ME}/metadata"), 401, "Workspace agent not authorized.")


async def test_a_user_token_revoked_by_another_process_is_refused_at_once(world: World) -> None:
    async with world.user() as client:
        for _ in range(2):
            assert (await client.get("/api/v2/users/me")).status_code == 200
        assert len(world.cp.store.auth_cache.users) >= 1, "the token was not cached"
        await admin(_where(world), "user", "revoke-tokens", "alice")
        assert_error(await client.get("/api/v2/users/me"), 401, "Invalid session token.")


async def test_a_rotated_token_is_refused_at_once_and_the_new_one_works(world: World) -> None:
    async with world.agent() as client:
        assert (await client.get(f"{ME}/metadata")).status_code == 200
        new = await world.cp.store.rotate_agent_token(world.agent_id)
        assert_error(await client.get(f"{ME}/metadata"), 401)
    async with world.agent(new) as client:
        assert (await client.get(f"{ME}/metadata")).status_code == 200


async def test_a_cached_token_is_refused_once_it_expires(world: World) -> None:
    token = await world.cp.store.issue_agent_token(
        world.agent_id, kind="aws-instance-identity", ttl_seconds=1.0
    )
    async with world.agent(token) as client:
        assert (await client.get(f"{ME}/metadata")).status_code == 200

        async def refused() -> bool:
            return (await client.get(f"{ME}/metadata")).status_code == 401

        # The cache keeps entries 30 s: only the token's own expiry ends this within 10 s.
        await poll_until(refused, timeout=10, message="the expired token kept working")


async def test_a_revoked_agent_tokens_socket_closes(world: World) -> None:
    async with as_agent(world) as agent:
        await _refreshed(world)  # the socket's refresh has checked (and cached) the token
        await admin(_where(world), "agent", "revoke-tokens", world.agent_id)
        assert await close_frame_code(agent) == 1008


async def test_a_new_build_closes_the_old_builds_socket(world: World) -> None:
    async with as_agent(world) as agent:
        await _refreshed(world)
        old = await world.cp.store.get_agent(world.agent_id)
        spec: AgentSpec = old.spec
        await world.cp.store.create_build(old.workspace_id, [spec])
        assert await close_frame_code(agent) == 1001


async def _refreshed(world: World) -> None:
    """Wait until the agent's socket has refreshed its row at least once."""
    await poll_until(lambda: _connected_at(world), timeout=10, message="never connected")
    first = await _connected_at(world)

    async def moved() -> bool:
        return await _connected_at(world) not in (None, first)

    await poll_until(moved, timeout=10, message="the socket never refreshed")


async def _connected_at(world: World) -> object:
    agent = await world.cp.store.get_agent(world.agent_id)
    return agent.last_connected_at
