"""Storage: restarts, concurrent writers, migrations, file modes, hashed tokens."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.store.migrations import MIGRATIONS, MigrationError
from controlplane.store.records import GitAuthProvider
from controlplane.store.sqlite import DB_NAME, SQLiteStore
from tests.conftest import REPO, ControlPlane, poll_until
from tests.e2e.controlplane.conftest import MAIN_AGENT, ME, World


@pytest.mark.e2e
async def test_state_survives_a_restart(world: World) -> None:
    cp = world.cp
    await cp.store.upsert_gitauth_provider(GitAuthProvider("github", r"github\.com", "github"))
    alice = await cp.store.get_user_by_name("alice")
    await cp.store.set_gitauth_link("github", alice.id, "gh-token", "")
    async with world.agent() as client:
        await client.post(
            f"{ME}/startup", json={"version": "v1.2.3", "expanded_directory": "/home/a"}
        )
        await client.post(f"{ME}/report-lifecycle", json={"state": "ready"})
        await client.post(f"{ME}/app-health", json={"Healths": {world.apps["web"]: "healthy"}})
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 7, "tx_bytes": 9})
        key_before = (await client.get(f"{ME}/gitsshkey")).json()
    before = await world.agent_json()

    await cp.restart()

    after = await world.agent_json()  # the user token still works
    for field in (
        "version",
        "expanded_directory",
        "lifecycle_state",
        "apps",
        "created_at",
        "resource_id",
    ):
        assert after[field] == before[field], field
    async with world.agent() as client:  # so does the agent token
        assert (await client.get(f"{ME}/gitsshkey")).json() == key_before
        auth = (await client.get(f"{ME}/gitauth", params={"url": "https://github.com/x"})).json()
    assert auth["username"] == "gh-token"
    stats = await cp.store.list_stats(world.agent_id)
    assert [(s.rx_bytes, s.tx_bytes) for s in stats] == [(7, 9)]
    workspace = (await cp.store.list_workspaces())[0]
    assert workspace.last_used_at is not None


@pytest.mark.e2e
async def test_connection_times_survive_a_restart(world: World) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{world.cp.url}{ME}/coordinate", headers={"Coder-Session-Token": world.agent_token}
        ),
    ):
        await poll_until(lambda: _status(world, "connected"), timeout=5)
        await world.cp.restart()  # the server closes the socket on its way down
    body = await world.agent_json()
    assert body["status"] == "disconnected"
    assert {"first_connected_at", "last_connected_at", "disconnected_at"} <= set(body)


async def _status(world: World, status: str) -> bool:
    return bool((await world.agent_json())["status"] == status)


@pytest.mark.e2e
async def test_concurrent_writes_from_many_agents_are_all_kept(
    make_control_plane: Any,
) -> None:
    control_plane: ControlPlane = await make_control_plane(stats_min_spacing=0)
    count = 50
    await control_plane.create_user("alice")
    agents = await control_plane.create_workspace(
        "alice", "fleet", [{"name": f"a{i}", "apps": MAIN_AGENT["apps"]} for i in range(count)]
    )

    # Looked up before the writes: the test's own store reads would otherwise queue for a
    # pool connection behind the requests under test.
    webs = {
        agent_id: next(
            a.id for a in await control_plane.store.list_apps(agent_id) if a.spec.slug == "web"
        )
        for agent_id, _ in agents.values()
    }
    # Twenty requests in flight: twice the PostgreSQL pool and twenty writers on SQLite's one
    # write lock, so every store still sees contention. All 350 at once only deepened the
    # queue: on a loaded 2-core machine (this one process runs the server and all clients)
    # the last in line waited past the PostgreSQL store's 15 s pool timeout and got a 503.
    in_flight = asyncio.Semaphore(20)

    async def post(client: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
        async with in_flight:
            return await client.post(path, json=body)

    async def one_agent(name: str, agent_id: str, token: str) -> None:
        web = webs[agent_id]
        async with control_plane.http(token) as client:
            client.timeout = httpx.Timeout(60.0)  # a loaded machine; the point is no lost write
            posts = [
                post(client, f"{ME}/report-stats", {"rx_bytes": n + 1, "tx_bytes": 1})
                for n in range(5)
            ]
            posts.append(
                post(
                    client,
                    f"{ME}/startup",
                    {"version": f"v1.0.{name[1:]}", "expanded_directory": ""},
                )
            )
            posts.append(post(client, f"{ME}/app-health", {"Healths": {web: "healthy"}}))
            responses = await asyncio.gather(*posts)
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
            for state in ("starting", "ready"):
                assert (
                    await post(client, f"{ME}/report-lifecycle", {"state": state})
                ).status_code == 204

    await asyncio.gather(*(one_agent(name, aid, tok) for name, (aid, tok) in agents.items()))

    for name, (agent_id, _) in agents.items():
        record = await control_plane.store.get_agent(agent_id)
        assert (record.version, record.lifecycle_state) == (f"v1.0.{name[1:]}", "ready")
        assert sorted(s.rx_bytes for s in await control_plane.store.list_stats(agent_id)) == [
            1,
            2,
            3,
            4,
            5,
        ]
        healths = {a.spec.slug: a.health for a in await control_plane.store.list_apps(agent_id)}
        assert healths == {"web": "healthy", "term": "disabled"}
    if control_plane.config.database_url:
        return  # PostgreSQL: every row was checked through the store above
    db = sqlite3.connect(control_plane.config.data_dir / DB_NAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT COUNT(*) FROM agent_stats").fetchone() == (count * 5,)
    finally:
        db.close()


async def test_migrations_are_versioned(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path)
    await store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()
    # Opening again is a no-op migration and keeps the data.
    store = await SQLiteStore.open(tmp_path)
    await store.create_user("carol")
    await store.close()
    store = await SQLiteStore.open(tmp_path)
    try:
        assert [u.name for u in await store.list_users()] == ["carol"]
    finally:
        await store.close()


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path)
    await store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(MigrationError, match="newer"):
        await SQLiteStore.open(tmp_path)


@pytest.mark.e2e
@pytest.mark.sqlite_only
async def test_database_files_are_private(world: World) -> None:
    data_dir = world.cp.config.data_dir
    async with world.agent() as client:  # make sure the WAL exists
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 1})
    files = [p for p in data_dir.iterdir() if p.name.startswith(DB_NAME)]
    assert {p.name for p in files} >= {DB_NAME, f"{DB_NAME}-wal"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def _documented_backup_commands() -> list[str]:
    """The backup one-liners exactly as docs/operations.md prints them."""
    text = (REPO / "docs" / "operations.md").read_text()
    block = text.split("**Backups.**", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.e2e
@pytest.mark.sqlite_only
@pytest.mark.parametrize("tool", ["sqlite3", "python3"])
async def test_documented_backup_is_private_under_a_permissive_umask(
    world: World, tmp_path: Path, tool: str
) -> None:
    """Run the documented backup command, under umask 000, against the running server's
    database: the copy must be mode 0600 and hold the data."""
    command = next(c for c in _documented_backup_commands() if f"&& {tool} " in c)
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    db = world.cp.config.data_dir / DB_NAME
    command = command.replace("/var/lib/wsagent/wsagent.db", str(db)).replace(
        "/backup/", f"{backup_dir}/"
    )
    proc = await asyncio.create_subprocess_shell(f"umask 000; {command}")
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    (copy,) = backup_dir.iterdir()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600, oct(copy.stat().st_mode)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone()[0] == 1


@pytest.mark.e2e
@pytest.mark.sqlite_only
async def test_tokens_are_stored_only_as_hashes(world: World) -> None:
    import hashlib

    async with world.agent() as client:
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 1})
    await world.cp.stop()  # checkpoint and close: the whole database is in the main file
    data = b"".join(p.read_bytes() for p in world.cp.config.data_dir.iterdir() if p.is_file())
    for token in (world.owner_token, world.agent_token, world.other_token):
        assert token.encode() not in data
        assert hashlib.sha256(token.encode()).hexdigest().encode() in data


@pytest.mark.e2e
@pytest.mark.sqlite_only
@pytest.mark.parametrize(("flag", "pragma"), [("normal", 1), ("full", 2)])
async def test_durability_flag_sets_sqlite_synchronous(
    make_control_plane: Any, flag: str, pragma: int
) -> None:
    from controlplane.cli import server_config_from_args, server_parser

    args = server_parser().parse_args(["--durability", flag, "--data-dir", "/nonexistent"])
    assert server_config_from_args(args).durability == flag
    cp: ControlPlane = await make_control_plane(durability=flag)
    writer = cp.store._conn  # the connection every write transaction goes through
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == pragma
    assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_store_has_every_store_method_with_its_signature() -> None:
    """The split into parts keeps the one narrow interface (docs/design.md, "Embedded
    default, real engine to grow into")."""
    import inspect

    from controlplane.store.base import Store

    names = [n for n, v in vars(Store).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert len(names) > 25
    for name in names:
        impl = getattr(SQLiteStore, name, None)
        assert impl is not None, name
        assert inspect.iscoroutinefunction(impl), name
        want = inspect.signature(getattr(Store, name))
        got = inspect.signature(impl)
        assert list(got.parameters) == list(want.parameters), name
