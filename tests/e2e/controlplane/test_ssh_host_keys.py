"""The SSH host key an agent reports and its owner reads: validation, ownership, updates
(on both stores)."""

from __future__ import annotations

import pytest

from tests.e2e.controlplane.conftest import ME, World, assert_error

pytestmark = pytest.mark.e2e

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP53EreG7mhnOhB48aEAevPlM85zcNvqXxUgT2QfQ0XJ"


async def test_reported_key_is_published_to_the_owner_only(world: World) -> None:
    path = f"/api/v2/workspaceagents/{world.agent_id}/ssh-host-key"
    async with world.user() as user:
        assert_error(await user.get(path), 404, "No SSH host key published.")
    async with world.agent() as agent:
        response = await agent.post(f"{ME}/ssh-host-key", json={"public_key": KEY + " comment"})
        assert response.status_code == 204, response.text
    async with world.user() as user:
        response = await user.get(path)
        assert response.status_code == 200
        assert response.json() == {"public_key": KEY}
    async with world.user(world.other_token) as other:
        assert_error(await other.get(path), 404)
    async with world.agent() as agent:  # a new key replaces the old one
        response = await agent.post(f"{ME}/ssh-host-key", json={"public_key": OTHER})
        assert response.status_code == 204
    async with world.user() as user:
        assert (await user.get(path)).json() == {"public_key": OTHER}


@pytest.mark.parametrize(
    "body",
    [
        {"public_key": ""},
        {"public_key": "ssh-ed25519"},
        {"public_key": "ssh-dss AAAA"},
        {"public_key": "ssh-rsa " + KEY.split()[1]},
        {"public_key": 7},
        {},
    ],
)
async def test_bad_keys_are_400(world: World, body: dict[str, object]) -> None:
    async with world.agent() as agent:
        body_json = assert_error(await agent.post(f"{ME}/ssh-host-key", json=body), 400)
    assert body_json["validations"][0]["field"] == "public_key"


async def test_only_agents_report(world: World) -> None:
    async with world.user() as user:
        response = await user.post(f"{ME}/ssh-host-key", json={"public_key": KEY})
    assert_error(response, 401)
