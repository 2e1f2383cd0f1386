"""``wsagent admin migrate-store``: a populated SQLite data directory copied into an empty
PostgreSQL database works there as it did (sessions, agent tokens, workspaces, agents,
stats, git auth); a non-empty target is refused with nothing written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import ControlPlane
from tests.e2e.controlplane.cli import wsagent
from tests.e2e.controlplane.conftest import ME, World, make_world

pytestmark = [pytest.mark.postgres_only, pytest.mark.e2e]

GITHUB = "https://github.com/acme/repo"


async def _populate(world: World) -> None:
    store = world.cp.store
    from controlplane.store.records import GitAuthProvider

    await store.upsert_gitauth_provider(GitAuthProvider("github", r"github\.com", "github"))
    alice = await store.get_user_by_name("alice")
    await store.set_gitauth_link("github", alice.id, "gh-token", "")
    async with world.agent() as client:
        assert (
            await client.post(
                f"{ME}/startup", json={"version": "v1.2.3", "expanded_directory": "/home/a"}
            )
        ).status_code == 200
        await client.post(f"{ME}/report-lifecycle", json={"state": "ready"})
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 7, "tx_bytes": 9})
        await client.post(f"{ME}/app-health", json={"Healths": {world.apps["web"]: "healthy"}})


async def test_a_populated_sqlite_store_round_trips_into_postgres(
    make_control_plane: Callable[..., Awaitable[ControlPlane]],
    make_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
) -> None:
    data = tmp_path / "sqlite"
    sqlite_plane = await make_control_plane(data_dir=data, database_url="")
    world = await make_world(sqlite_plane)
    await _populate(world)
    before = await world.agent_json()
    stats_before = [
        (s.id, s.rx_bytes, s.tx_bytes) for s in await world.cp.store.list_stats(world.agent_id)
    ]
    key_before = await world.cp.store.git_ssh_key(
        (await world.cp.store.get_user_by_name("alice")).id
    )
    await sqlite_plane.stop()

    url = await make_database()
    result = await wsagent("admin", "--data-dir", str(data), "--json", "migrate-store", "--to", url)
    assert result.code == 0, result.stderr
    rows = result.json["rows"]
    assert rows["users"] == 2 and rows["workspaces"] == 1 and rows["agents"] == 1
    assert rows["user_tokens"] == 2 and rows["agent_tokens"] == 1 and rows["agent_stats"] == 1
    assert rows["gitauth_links"] == 1 and rows["apps"] == 2

    # No stats spacing: the next report is a new row, whose id must follow the copied ones.
    pg_plane = await make_control_plane(
        data_dir=tmp_path / "unused", database_url=url, stats_min_spacing=0
    )
    moved = World(pg_plane, world.owner_token, world.other_token, world.agent_id, world.agent_token)
    after = await moved.agent_json()  # the session token still works
    for field in ("version", "expanded_directory", "lifecycle_state", "apps", "created_at", "name"):
        assert after[field] == before[field], field
    async with moved.agent() as client:  # so does the agent token
        auth = (await client.get(f"{ME}/gitauth", params={"url": GITHUB})).json()
        assert auth["username"] == "gh-token"
        assert (await client.post(f"{ME}/report-stats", json={"rx_bytes": 1})).status_code == 200
    async with moved.user(world.other_token) as client:
        assert (await client.get("/api/v2/users/me")).json()["username"] == "bob"
    stats = [
        (s.id, s.rx_bytes, s.tx_bytes) for s in await pg_plane.store.list_stats(world.agent_id)
    ]
    assert stats[: len(stats_before)] == stats_before
    assert len(stats) == len(stats_before) + 1  # new ids continue after the copied ones
    alice = await pg_plane.store.get_user_by_name("alice")
    assert await pg_plane.store.git_ssh_key(alice.id) == key_before
    assert [w.name for w in await pg_plane.store.list_workspaces()] == ["dev"]

    again = await wsagent("admin", "--data-dir", str(data), "migrate-store", "--to", url)
    assert again.code == 1
    assert "not empty" in again.stderr and "Traceback" not in again.stderr
