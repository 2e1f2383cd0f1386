"""``/workspaceagents/me/*`` behaves as Coder's server does (docs/protocol.md, "Wire notes")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.conftest import poll_until
from tests.e2e.controlplane.conftest import ME, World, assert_error

pytestmark = pytest.mark.e2e

# ------------------------------------------------------------------ metadata


async def test_metadata_fields_and_units(world: World) -> None:
    async with world.agent() as client:
        response = await client.get(f"{ME}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.text.endswith("\n")  # Go's json.Encoder
    body = response.json()
    assert set(body) >= {
        "git_auth_configs",
        "vscode_port_proxy_uri",
        "apps",
        "derpmap",
        "environment_variables",
        "startup_script",
        "startup_script_timeout",
        "directory",
        "motd_file",
    }
    assert body["startup_script"] == "echo hello"
    assert body["startup_script_timeout"] == 30 * 1_000_000_000  # integer nanoseconds
    assert isinstance(body["startup_script_timeout"], int)
    assert body["directory"] == "~/project"  # raw, unexpanded
    assert body["environment_variables"] == {"GREETING": "hi", "EMPTY": ""}
    assert body["motd_file"] == "/etc/motd"
    assert body["git_auth_configs"] == 0
    assert body["vscode_port_proxy_uri"] == ""  # no wildcard hostname configured


async def test_manifest_is_the_metadata_under_its_later_name(world: World) -> None:
    # Coder's agents from the agent-metadata release on fetch GET /me/manifest; the body is
    # the same object.
    async with world.agent() as client:
        metadata = await client.get(f"{ME}/metadata")
        manifest = await client.get(f"{ME}/manifest")
    assert manifest.status_code == 200, manifest.text
    assert manifest.headers["content-type"] == "application/json; charset=utf-8"
    assert manifest.json() == metadata.json()
    async with world.cp.http() as anonymous:
        assert_error(await anonymous.get(f"{ME}/manifest"), 401)


async def test_metadata_derpmap_uses_tailscale_casing(world: World) -> None:
    async with world.agent() as client:
        derp = (await client.get(f"{ME}/metadata")).json()["derpmap"]
    assert set(derp) <= {"Regions", "omitDefaultRegions"}
    assert derp["Regions"], derp
    for key, region in derp["Regions"].items():
        assert key == str(region["RegionID"])  # map keys are decimal region ids
        assert {"EmbeddedRelay", "RegionID", "RegionCode", "RegionName", "Nodes"} <= set(region)
        for node in region["Nodes"]:
            assert {"Name", "RegionID", "HostName"} <= set(node)
            assert not {"hostName", "regionID", "derpport", "name"} & set(node)
    region = next(iter(derp["Regions"].values()))
    node = region["Nodes"][0]
    assert region["EmbeddedRelay"] is True
    assert node["HostName"] == "127.0.0.1"
    assert node["DERPPort"] == world.cp.config.port
    assert node["ForceHTTP"] is True


async def test_metadata_apps(world: World) -> None:
    async with world.agent() as client:
        apps = {a["slug"]: a for a in (await client.get(f"{ME}/metadata")).json()["apps"]}
    web, term = apps["web"], apps["term"]
    assert web == {
        "id": world.apps["web"],
        "url": "http://localhost:8080",
        "external": False,
        "slug": "web",
        "display_name": "Web",
        "icon": "/icon/web.svg",
        "subdomain": False,
        "sharing_level": "owner",
        "healthcheck": {"url": "http://localhost:8080/healthz", "interval": 5, "threshold": 3},
        "health": "initializing",  # a healthcheck URL is set
    }
    assert term["health"] == "disabled"  # no healthcheck
    assert term["command"] == "htop"
    assert term["sharing_level"] == "authenticated"
    assert "icon" not in term  # omitempty


async def test_metadata_counts_gitauth_providers_and_vscode_proxy(world_factory: Any) -> None:
    w: World = await world_factory(wildcard_access_url="*.apps.example.com")
    from controlplane.store.records import GitAuthProvider

    await w.cp.store.upsert_gitauth_provider(GitAuthProvider("github", r"github\.com", "github"))
    await w.cp.store.upsert_gitauth_provider(GitAuthProvider("gitlab", r"gitlab\.com", "gitlab"))
    async with w.agent() as client:
        body = (await client.get(f"{ME}/metadata")).json()
    assert body["git_auth_configs"] == 2
    assert body["vscode_port_proxy_uri"] == (
        f"http://{{{{port}}}}--main--dev--alice.apps.example.com:{w.cp.config.port}"
    )


# ------------------------------------------------------------------ startup


@pytest.mark.parametrize("version", ["v0.1.0", "v0.0.0-devel", "v1.2.3+build.5", "v2", "v2.1"])
async def test_startup_accepts_v_prefixed_semver(world: World, version: str) -> None:
    async with world.agent() as client:
        response = await client.post(
            f"{ME}/startup", json={"version": version, "expanded_directory": "/home/alice/project"}
        )
    assert response.status_code == 200
    assert response.text.strip() == "null"
    body = await world.agent_json()
    assert body["version"] == version
    assert body["expanded_directory"] == "/home/alice/project"


@pytest.mark.parametrize("version", ["0.1.0", "", "v01.0.0", "v1.2.3.4", "latest", "v1.0.0-"])
async def test_startup_rejects_invalid_semver(world: World, version: str) -> None:
    async with world.agent() as client:
        response = await client.post(
            f"{ME}/startup", json={"version": version, "expanded_directory": ""}
        )
    body = assert_error(response, 400, "Invalid workspace agent version provided.")
    assert body["detail"] == f'invalid semver version: "{version}"'
    assert (await world.agent_json())["version"] == ""


# ------------------------------------------------------------------ lifecycle


async def test_lifecycle_starts_created_and_accepts_every_state(world: World) -> None:
    assert (await world.agent_json())["lifecycle_state"] == "created"
    async with world.agent() as client:
        for state in ("starting", "start_timeout", "start_error", "ready", "created"):
            response = await client.post(f"{ME}/report-lifecycle", json={"state": state})
            assert response.status_code == 204
            assert response.content == b""
            assert (await world.agent_json())["lifecycle_state"] == state


@pytest.mark.parametrize(
    "body", [{"state": "nonexistent_state"}, {"state": ""}, {}, {"state": "READY"}]
)
async def test_lifecycle_rejects_invalid_state(world: World, body: dict[str, Any]) -> None:
    async with world.agent() as client:
        response = await client.post(f"{ME}/report-lifecycle", json=body)
    error = assert_error(response, 400, "Invalid lifecycle state.")
    assert error["detail"].startswith(f'Invalid lifecycle state "{body.get("state", "")}"')
    assert (await world.agent_json())["lifecycle_state"] == "created"


# ------------------------------------------------------------------ app health


async def _healths(world: World) -> dict[str, str]:
    async with world.agent() as client:
        apps = (await client.get(f"{ME}/metadata")).json()["apps"]
    return {a["slug"]: a["health"] for a in apps}


@pytest.mark.parametrize("key", ["Healths", "healths"])
async def test_app_health_is_stored_and_visible(world: World, key: str) -> None:
    web = world.apps["web"]
    async with world.agent() as client:
        for health in ("healthy", "unhealthy", "initializing", "healthy"):
            response = await client.post(f"{ME}/app-health", json={key: {web: health}})
            assert response.status_code == 200, response.text
            assert response.text.strip() == "null"
            assert (await _healths(world)) == {"web": health, "term": "disabled"}
    agent = await world.agent_json()
    assert {a["slug"]: a["health"] for a in agent["apps"]} == {"web": "healthy", "term": "disabled"}


@pytest.mark.parametrize("body", [{}, {"Healths": {}}, {"Healths": None}])
async def test_app_health_empty_is_400(world: World, body: dict[str, Any]) -> None:
    async with world.agent() as client:
        response = await client.post(f"{ME}/app-health", json=body)
    assert_error(response, 400, "Health field is empty")


async def test_app_health_unknown_app_is_404(world: World) -> None:
    unknown = "6a1c2bdb-8a3b-4d4e-9b8f-6f1a4c1f2f3e"
    async with world.agent() as client:
        response = await client.post(f"{ME}/app-health", json={"Healths": {unknown: "healthy"}})
    body = assert_error(response, 404, "Error setting workspace app health")
    assert unknown in body["detail"]


async def test_app_health_app_without_healthcheck_is_404(world: World) -> None:
    term = world.apps["term"]
    async with world.agent() as client:
        response = await client.post(f"{ME}/app-health", json={"Healths": {term: "healthy"}})
    body = assert_error(response, 404, "Error setting workspace app health")
    assert "health checking is disabled" in body["detail"]
    assert (await _healths(world))["term"] == "disabled"


@pytest.mark.parametrize("value", ["disabled", "bogus", ""])
async def test_app_health_rejects_bad_values_and_writes_nothing(world: World, value: str) -> None:
    async with world.agent() as client:
        response = await client.post(
            f"{ME}/app-health", json={"Healths": {world.apps["web"]: value}}
        )
    assert_error(response, 400)
    assert (await _healths(world))["web"] == "initializing"


async def test_app_health_of_another_agent_is_404(world: World) -> None:
    other = await world.cp.create_workspace(
        "bob",
        "other",
        [
            {
                "name": "x",
                "apps": [
                    {
                        "slug": "web",
                        "healthcheck": {"url": "http://localhost/", "interval": 1, "threshold": 1},
                    }
                ],
            }
        ],
    )
    other_app = (await world.cp.store.list_apps(other["x"][0]))[0].id
    async with world.agent() as client:
        response = await client.post(f"{ME}/app-health", json={"Healths": {other_app: "healthy"}})
    assert_error(response, 404)
    assert (await world.cp.store.list_apps(other["x"][0]))[0].health == "initializing"


# ------------------------------------------------------------------ stats

STATS = {
    "conns_by_proto": {"ssh": 1, "reconnecting-pty": 2},
    "num_comms": 3,
    "rx_packets": 10,
    "rx_bytes": 1000,
    "tx_packets": 20,
    "tx_bytes": 2000,
}


async def test_stats_interval_is_configured_nanoseconds(world_factory: Any) -> None:
    w: World = await world_factory(stats_interval=42.5)
    async with w.agent() as client:
        response = await client.post(f"{ME}/report-stats", json=STATS)
    assert response.status_code == 200
    assert response.json() == {"report_interval": 42_500_000_000}


async def test_idle_stats_store_nothing(world: World) -> None:
    idle = {**STATS, "rx_bytes": 0, "tx_bytes": 0}
    async with world.agent() as client:
        response = await client.post(f"{ME}/report-stats", json=idle)
        assert response.status_code == 200
        assert response.json() == {"report_interval": 600 * 1_000_000_000}
        assert (await client.post(f"{ME}/report-stats", json={})).status_code == 200
    assert await world.cp.store.list_stats(world.agent_id) == []
    workspace = (await world.cp.store.list_workspaces())[0]
    assert workspace.last_used_at is None


async def test_stats_are_stored_and_bump_last_used(world_factory: Any) -> None:
    world: World = await world_factory(stats_min_spacing=0)
    async with world.agent() as client:
        assert (await client.post(f"{ME}/report-stats", json=STATS)).status_code == 200
        only_rx = {"rx_bytes": 5}
        assert (await client.post(f"{ME}/report-stats", json=only_rx)).status_code == 200
    rows = await world.cp.store.list_stats(world.agent_id)
    assert len(rows) == 2
    first = rows[0]
    assert first.conns_by_proto == STATS["conns_by_proto"]
    assert (
        first.num_comms,
        first.rx_packets,
        first.rx_bytes,
        first.tx_packets,
        first.tx_bytes,
    ) == (
        3,
        10,
        1000,
        20,
        2000,
    )
    assert rows[1].rx_bytes == 5 and rows[1].tx_bytes == 0
    workspace = (await world.cp.store.list_workspaces())[0]
    assert workspace.last_used_at is not None
    assert first.user_id == workspace.owner_id and first.workspace_id == workspace.id


async def test_stats_in_the_later_coder_spelling_keep_their_counts(world_factory: Any) -> None:
    # Coder's agents since v0.19 send connections_by_proto and connection_count (plus
    # session and latency figures, not stored here).
    world: World = await world_factory(stats_min_spacing=0)
    later = {
        "connections_by_proto": {"ssh": 2, "tcp": 1},
        "connection_count": 3,
        "connection_median_latency_ms": 1.5,
        "session_count_ssh": 2,
        "rx_packets": 10,
        "rx_bytes": 1000,
        "tx_packets": 20,
        "tx_bytes": 2000,
    }
    async with world.agent() as client:
        response = await client.post(f"{ME}/report-stats", json=later)
    assert response.status_code == 200, response.text
    rows = await world.cp.store.list_stats(world.agent_id)
    assert len(rows) == 1
    assert rows[0].conns_by_proto == {"ssh": 2, "tcp": 1}
    assert (rows[0].num_comms, rows[0].rx_bytes, rows[0].tx_bytes) == (3, 1000, 2000)


# ------------------------------------------------------------------ gitsshkey


async def test_gitsshkey_is_the_owners_ed25519_openssh_pair(world: World) -> None:
    async with world.agent() as client:
        response = await client.get(f"{ME}/gitsshkey")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"public_key", "private_key"}
    assert body["public_key"].startswith("ssh-ed25519 ")
    assert body["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    private = serialization.load_ssh_private_key(body["private_key"].encode(), password=None)
    public = serialization.load_ssh_public_key(" ".join(body["public_key"].split()[:2]).encode())
    assert isinstance(private, Ed25519PrivateKey) and isinstance(public, Ed25519PublicKey)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert private.public_key().public_bytes(*raw) == public.public_bytes(*raw)
    owner = await world.cp.store.get_user_by_name("alice")
    stored = await world.cp.store.git_ssh_key(owner.id)
    assert stored.public_key == body["public_key"]
    # Bob's key is a different one.
    bob = await world.cp.store.get_user_by_name("bob")
    assert (await world.cp.store.git_ssh_key(bob.id)).public_key != body["public_key"]


@pytest.mark.parametrize(
    ("access_url", "expected"),
    [
        ("https://coder.example.com", "https://{{port}}--main--dev--alice.apps.example.com"),
        ("https://coder.example.com/", "https://{{port}}--main--dev--alice.apps.example.com"),
        ("http://[::1]:3000", "http://{{port}}--main--dev--alice.apps.example.com:3000"),
        ("http://[fd00::2]", "http://{{port}}--main--dev--alice.apps.example.com"),
        (
            "https://coder.example.com:8443",
            "https://{{port}}--main--dev--alice.apps.example.com:8443",
        ),
    ],
)
async def test_vscode_proxy_uri_follows_the_access_url(
    world_factory: Any, access_url: str, expected: str
) -> None:
    w: World = await world_factory(wildcard_access_url="*.apps.example.com", access_url=access_url)
    # The advertised access URL is not where the test server listens: call it directly.
    assert w.cp.server is not None
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{w.cp.server.port}",
        headers={"Coder-Session-Token": w.agent_token},
    ) as client:
        body = (await client.get(f"{ME}/metadata")).json()
    assert body["vscode_port_proxy_uri"] == expected


async def test_reports_closer_than_the_spacing_merge_into_one_row(world_factory: Any) -> None:
    """At most one stored row per agent per spacing: extras add into the newest row."""
    world: World = await world_factory(stats_interval=600)  # spacing 540 s
    async with world.agent() as client:
        for n in range(20):
            body = {"conns_by_proto": {"ssh": 1, f"p{n}": 1}, "rx_bytes": 10, "tx_packets": 1}
            response = await client.post(f"{ME}/report-stats", json=body)
            assert response.status_code == 200, response.text
    (row,) = await world.cp.store.list_stats(world.agent_id)
    assert (row.rx_bytes, row.tx_packets) == (200, 20)
    # The merged row keeps the per-report protocol cap: ssh plus the first 15 others.
    assert row.conns_by_proto == {"ssh": 20, **{f"p{n}": 1 for n in range(15)}}


async def test_rows_resume_once_the_spacing_has_passed(world_factory: Any) -> None:
    # A spacing the two back-to-back posts cannot outlast even on a loaded machine (0.2 s
    # did: the second landed after it and made a row of its own).
    spacing = 3.0
    world: World = await world_factory(stats_min_spacing=spacing)
    async with world.agent() as client:
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 1})
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 2})
        first = (await world.cp.store.list_stats(world.agent_id))[0]
        # Wait on the clock, not a fixed sleep: until the row is older than the spacing.
        await poll_until(
            lambda: datetime.now(UTC) - first.created_at > timedelta(seconds=spacing + 0.05),
            timeout=spacing + 10,
        )
        await client.post(f"{ME}/report-stats", json={"rx_bytes": 4})
    assert [r.rx_bytes for r in await world.cp.store.list_stats(world.agent_id)] == [3, 4]


@pytest.mark.parametrize(
    ("conns", "detail"),
    [
        ({f"proto{i}": 1 for i in range(17)}, "17 protocols"),
        ({"x" * 65: 1}, "65 characters"),
        ({"": 1}, "0 characters"),
    ],
)
async def test_protocol_keys_are_capped_in_number_and_length(
    world: World, conns: dict[str, int], detail: str
) -> None:
    async with world.agent() as client:
        response = await client.post(
            f"{ME}/report-stats", json={"conns_by_proto": conns, "rx_bytes": 1}
        )
    error = assert_error(response, 400, "Validation failed.")
    assert error["validations"][0]["field"] == "conns_by_proto"
    assert detail in error["validations"][0]["detail"]
    assert await world.cp.store.list_stats(world.agent_id) == []


async def test_a_flood_of_large_reports_does_not_grow_the_database(world: World) -> None:
    """Reports as large as the caps allow, posted as fast as possible, cost one row."""
    db = world.cp.config.data_dir / "wsagent.db"
    biggest = {"conns_by_proto": {f"{i:02d}" + "p" * 62: 2**62 for i in range(16)}}
    async with world.agent() as client:
        await client.post(f"{ME}/report-stats", json={**biggest, "rx_bytes": 1})
        before = await world.cp.store.list_stats(world.agent_id)
        for _ in range(200):
            response = await client.post(f"{ME}/report-stats", json={**biggest, "rx_bytes": 1})
            assert response.status_code == 200
    rows = await world.cp.store.list_stats(world.agent_id)
    assert len(before) == len(rows) == 1 and rows[0].rx_bytes == 201
    # Saturating counters: 201 x 2**62 stays within the int64 column.
    assert set(rows[0].conns_by_proto.values()) == {2**63 - 1}
    if world.cp.config.database_url:
        import asyncpg

        conn = await asyncpg.connect(world.cp.config.database_url)
        try:
            size = await conn.fetchval("SELECT pg_total_relation_size('agent_stats')")
        finally:
            await conn.close()
        assert size < 1 << 20
    else:
        assert db.stat().st_size < 1 << 20
