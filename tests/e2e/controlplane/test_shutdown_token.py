"""An agent that reports shutting_down keeps a valid token while its shutdown script runs."""

from __future__ import annotations

import pytest

from tests.conftest import poll_until
from tests.e2e.controlplane.conftest import ME, World

pytestmark = pytest.mark.e2e


async def test_shutting_down_extends_expiring_tokens(world: World) -> None:
    store = world.cp.store
    # Two agents with identity tokens about to expire; only the first starts shutting down.
    stopping = await store.issue_agent_token(
        world.agent_id, kind="aws-instance-identity", ttl_seconds=1.5
    )
    other_agents = await world.cp.create_workspace("alice", "other", [{"name": "main"}])
    other_id, _ = other_agents["main"]
    running = await store.issue_agent_token(other_id, kind="aws-instance-identity", ttl_seconds=1.5)
    async with world.agent(stopping) as client:
        response = await client.post(f"{ME}/report-lifecycle", json={"state": "shutting_down"})
        assert response.status_code == 204

    async def expired() -> bool:
        async with world.agent(running) as client:
            return (await client.get(f"{ME}/gitsshkey")).status_code == 401

    await poll_until(expired, timeout=10, interval=0.1)
    async with world.agent(stopping) as client:
        assert (await client.get(f"{ME}/gitsshkey")).status_code == 200
        response = await client.post(f"{ME}/report-lifecycle", json={"state": "off"})
        assert response.status_code == 204
    # Revoked stays revoked: the extension is not a way back.
    await store.revoke_agent_tokens(world.agent_id)
    async with world.agent(stopping) as client:
        assert (await client.get(f"{ME}/gitsshkey")).status_code == 401
