"""``wsagent admin``: every write goes to the data directory a running server reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ControlPlane
from tests.e2e.controlplane.cli import Where, admin, wsagent
from tests.e2e.controlplane.conftest import AGENTS, ME, assert_error

WORKSPACE_FILE = """
[[users]]
name = "alice"
email = "alice@example.com"

[[users]]
name = "bob"

[[gitauth]]
id = "gitlab"
regex = '^https://gitlab\\.example\\.com/'
type = "gitlab"

  [[gitauth.credentials]]
  user = "alice"
  token = "glpat-example"

[[workspaces]]
owner = "alice"
name = "dev"

  [[workspaces.agents]]
  name = "main"
  startup_script = "echo ready"
  startup_script_timeout = 300
  shutdown_script = "echo stopping"
  shutdown_script_timeout = 60
  directory = "~/src"
  motd_file = "/etc/motd"
  connection_timeout = 60
  troubleshooting_url = "https://wiki.example.com/agents"
  login_before_ready = false
  env = { EDITOR = "vim" }

    [[workspaces.agents.apps]]
    slug = "code"
    display_name = "VS Code"
    url = "http://localhost:13337"
    healthcheck = { url = "http://localhost:13337/healthz", interval = 5, threshold = 6 }

  [[workspaces.agents]]
  name = "gpu"
  auth = "google-instance-identity"
  instance_id = "1234567890"
"""


async def _plane_on(make_control_plane: Any, where: Where) -> ControlPlane:
    plane: ControlPlane = await make_control_plane(
        data_dir=where.data_dir, database_url=where.database_url
    )
    return plane


@pytest.mark.e2e
async def test_user_and_workspace_created_by_the_cli_work_against_the_server(
    make_control_plane: Any, tmp_path: Path, make_database: Any
) -> None:
    data = Where(tmp_path / "data", await make_database())
    user = await admin(data, "user", "create", "alice", "--email", "a@example.com")
    assert set(user) == {"id", "name", "session_token"}
    cp = await _plane_on(make_control_plane, data)
    # The server is running while the CLI writes to the same database.
    created = await admin(
        data,
        "workspace",
        "create",
        "--owner",
        "alice",
        "--name",
        "dev",
        "--env",
        "A=1",
        "--startup-script",
        "true",
        "--startup-script-timeout",
        "9",
        "--shutdown-script",
        "echo bye",
        "--shutdown-script-timeout",
        "1.5",
        "--app",
        "slug=web,url=http://localhost:8080,healthcheck-url=http://localhost:8080/h,interval=2",
    )
    agent = created["agents"][0]
    async with cp.http(user["session_token"]) as client:
        assert (await client.get("/api/v2/users/me")).json()["username"] == "alice"
        body = (await client.get(f"{AGENTS}/{agent['agent_id']}")).json()
    assert body["environment_variables"] == {"A": "1"}
    assert body["startup_script_timeout_seconds"] == 9
    assert body["shutdown_script"] == "echo bye"
    assert body["shutdown_script_timeout_seconds"] == 2  # whole seconds, rounded up
    async with cp.http(agent["token"]) as client:
        metadata = (await client.get(f"{ME}/metadata")).json()
    assert metadata["shutdown_script"] == "echo bye"
    assert metadata["shutdown_script_timeout"] == 1_500_000_000  # nanoseconds
    assert metadata["apps"][0]["healthcheck"] == {
        "url": "http://localhost:8080/h",
        "interval": 2,
        "threshold": 3,
    }
    assert metadata["startup_script_timeout"] == 9 * 1_000_000_000

    token = await admin(data, "user", "token", "alice")
    async with cp.http(token["session_token"]) as client:
        assert (await client.get("/api/v2/users/me")).status_code == 200
    listed = await admin(data, "workspace", "list")
    assert listed[0]["agents"] == [{"name": "main", "agent_id": agent["agent_id"]}]


@pytest.mark.e2e
async def test_gitauth_and_token_rotation(
    make_control_plane: Any, tmp_path: Path, make_database: Any
) -> None:
    data = Where(tmp_path / "data", await make_database())
    await admin(data, "user", "create", "alice")
    created = await admin(data, "workspace", "create", "--owner", "alice", "--name", "dev")
    agent = created["agents"][0]
    await admin(
        data, "gitauth", "add-provider", "--id", "bb", "--regex", "bitbucket", "--type", "bitbucket"
    )
    cp = await _plane_on(make_control_plane, data)
    async with cp.http(agent["token"]) as client:
        url = "https://bitbucket.org/x/y"
        assert (
            (await client.get(f"{ME}/gitauth", params={"url": url}))
            .json()["url"]
            .endswith("/gitauth/bb")
        )
        await admin(
            data, "gitauth", "set-credential", "--provider", "bb", "--user", "alice", "--token", "T"
        )
        answer = (await client.get(f"{ME}/gitauth", params={"url": url})).json()
    assert answer == {"username": "x-token-auth", "password": "T", "url": ""}

    rotated = await admin(data, "agent", "rotate-token", agent["agent_id"])
    assert rotated["token"] != agent["token"]
    async with cp.http(agent["token"]) as client:
        assert_error(await client.get(f"{ME}/metadata"), 401)
    async with cp.http(rotated["token"]) as client:
        assert (await client.get(f"{ME}/metadata")).status_code == 200
    key = await admin(data, "gitsshkey", "show", "--user", "alice")
    assert key["public_key"].startswith("ssh-ed25519 ")
    fresh = await admin(data, "gitsshkey", "regenerate", "--user", "alice")
    assert fresh["public_key"].startswith("ssh-ed25519 ") and fresh != key
    async with cp.http(rotated["token"]) as client:
        served = (await client.get(f"{ME}/gitsshkey")).json()
    assert served["public_key"].strip() == fresh["public_key"]


@pytest.mark.e2e
async def test_apply_a_workspace_file_twice_is_idempotent(
    make_control_plane: Any, tmp_path: Path, make_database: Any
) -> None:
    data = Where(tmp_path / "data", await make_database())
    spec = tmp_path / "workspaces.toml"
    spec.write_text(WORKSPACE_FILE)
    first = await admin(data, "apply", str(spec))
    assert set(first["users"]) == {"alice", "bob"}
    agents = {a["agent"]: a for a in first["agents"]}
    assert set(agents) == {"main", "gpu"}
    assert agents["main"]["token"] and agents["gpu"]["token"] == ""  # identity agents get none
    assert agents["gpu"]["auth"] == "google-instance-identity"

    second = await admin(data, "apply", str(spec))
    assert second == {"users": {}, "agents": [], "not_rebuilt": []}

    cp = await _plane_on(make_control_plane, data)
    assert len(await cp.store.list_users()) == 2
    workspaces = await cp.store.list_workspaces()
    assert len(workspaces) == 1 and workspaces[0].latest_build == 1
    async with cp.http(agents["main"]["token"]) as client:
        metadata = (await client.get(f"{ME}/metadata")).json()
        auth = await client.get(f"{ME}/gitauth", params={"url": "https://gitlab.example.com/a"})
    assert metadata["environment_variables"] == {"EDITOR": "vim"}
    assert metadata["shutdown_script"] == "echo stopping"
    assert metadata["shutdown_script_timeout"] == 60_000_000_000
    assert metadata["apps"][0]["display_name"] == "VS Code"
    assert metadata["apps"][0]["health"] == "initializing"
    assert auth.json() == {"username": "oauth2", "password": "glpat-example", "url": ""}
    async with cp.http(first["users"]["alice"]) as client:
        body = (await client.get(f"{AGENTS}/{agents['main']['agent_id']}")).json()
    assert body["troubleshooting_url"] == "https://wiki.example.com/agents"
    assert body["connection_timeout_seconds"] == 60
    assert body["login_before_ready"] is False
    gpu = await cp.store.get_agent(agents["gpu"]["agent_id"])
    assert gpu.spec.instance_id == "1234567890"


@pytest.mark.e2e
async def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await admin(data, "user", "create", "alice")
    again = await wsagent("admin", "--data-dir", str(data), "user", "create", "alice")
    assert again.code == 1
    assert again.stderr.strip() == "wsagent admin: error: user 'alice' already exists"
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[workspaces]]\nowner = "alice"\nname = "x"\n[[workspaces.agents]]\nauth = "magic"\n'
    )
    result = await wsagent("admin", "--data-dir", str(data), "apply", str(bad))
    assert result.code == 1
    assert "workspaces[0].agents[0].auth" in result.stderr and "Traceback" not in result.stderr
    app = await wsagent(
        "admin",
        "--data-dir",
        str(data),
        "workspace",
        "create",
        "--owner",
        "alice",
        "--name",
        "y",
        "--app",
        "slug=web,healthcheck-url=http://x/,interval=soon",
    )
    assert app.code == 1 and "Traceback" not in app.stderr, app.stderr
    regex = await wsagent(
        "admin",
        "--data-dir",
        str(data),
        "gitauth",
        "add-provider",
        "--id",
        "gh",
        "--regex",
        "(",
    )
    assert regex.code == 1 and "--id/--regex.regex: missing )" in regex.stderr, regex.stderr
    slash = await wsagent(
        "admin",
        "--data-dir",
        str(data),
        "gitauth",
        "add-provider",
        "--id",
        "a/b",
        "--regex",
        "x",
    )
    assert slash.code == 1 and "--id/--regex.id" in slash.stderr, slash.stderr
    assert await admin(data, "gitauth", "list") == []


async def test_the_documented_workspace_file_applies(tmp_path: Path) -> None:
    """docs/operations.md's example is a working file."""
    import tomllib

    from controlplane.admin import apply_spec
    from controlplane.store.sqlite import SQLiteStore
    from tests.conftest import REPO

    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## Administration", 1)[1].split("\n## ", 1)[0]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    store = await SQLiteStore.open(tmp_path)
    try:
        result = await apply_spec(store, tomllib.loads(example))
        assert {a["agent"] for a in result.agents} == {"main", "gpu"}
        apps = await store.list_apps(
            next(a["agent_id"] for a in result.agents if a["agent"] == "main")
        )
        assert apps[0].spec.healthcheck_threshold == 6
        assert (await apply_spec(store, tomllib.loads(example))).to_json() == {
            "users": {},
            "agents": [],
            "not_rebuilt": [],
        }
    finally:
        await store.close()


BAD_NAMES: list[tuple[str, ...]] = [
    ("user", "create", "alice.smith"),
    ("user", "create", ""),
    ("user", "create", "alice-"),
    ("user", "create", "a" * 33),
    ("workspace", "create", "--owner", "alice", "--name", "my_ws"),
    ("workspace", "create", "--owner", "alice", "--name", "ok", "--agent-name", "a--b"),
]


@pytest.mark.e2e
async def test_names_are_dns_labels(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await admin(data, "user", "create", "alice")
    results = await asyncio.gather(
        *(wsagent("admin", "--data-dir", str(data), *args) for args in BAD_NAMES)
    )
    for args, result in zip(BAD_NAMES, results, strict=True):
        assert result.code == 1, (args, result)
        assert "letters, digits and single hyphens" in result.stderr, (args, result)
    assert [u["name"] for u in await admin(data, "user", "list")] == ["alice"]
    assert await admin(data, "workspace", "list") == []


TYPO_FILES = {
    "[[user]]": ("[[user]]\nname = 'carol'\n", "unknown key 'user' (did you mean 'users'?)"),
    "startup_script_timout": (
        WORKSPACE_FILE.replace("startup_script_timeout = 300", "startup_script_timout = 300"),
        "workspaces[0].agents[0]: unknown key 'startup_script_timout'"
        " (did you mean 'startup_script_timeout'?)",
    ),
    "enviroment": (
        WORKSPACE_FILE.replace('env = { EDITOR = "vim" }', 'enviroment = { EDITOR = "vim" }'),
        "workspaces[0].agents[0]: unknown key 'enviroment' (did you mean 'environment_variables'?)",
    ),
    "auth value": (
        WORKSPACE_FILE.replace(
            'auth = "google-instance-identity"', 'auth = "google-instance-identiy"'
        ),
        "workspaces[0].agents[1].auth: 'google-instance-identiy' is not one of ["
        "'aws-instance-identity', 'azure-instance-identity', 'google-instance-identity',"
        " 'token'] (did you mean 'google-instance-identity'?)",
    ),
    "healthcheck.intervall": (
        WORKSPACE_FILE.replace("interval = 5,", "intervall = 5,"),
        "healthcheck: unknown key 'intervall' (did you mean 'interval'?)",
    ),
}


@pytest.mark.e2e
async def test_typos_in_a_workspace_file_are_errors_and_write_nothing(tmp_path: Path) -> None:
    """Each typo: exit 1, one line naming the key and the nearest valid one, and no
    database written (the file declares users before the typo, and none is created)."""
    data = tmp_path / "data"
    for label, (text, message) in TYPO_FILES.items():
        spec = tmp_path / "typo.toml"
        spec.write_text(text)
        result = await wsagent("admin", "--data-dir", str(data), "apply", str(spec))
        assert result.code == 1, (label, result)
        assert result.stdout == "", (label, result)
        (line,) = result.stderr.splitlines()
        assert message in line, (label, line)
        assert not data.exists(), label


@pytest.mark.e2e
async def test_typos_in_workspace_create_flags_write_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await admin(data, "user", "create", "alice")
    base = ("admin", "--data-dir", str(data), "workspace", "create", "--owner", "alice")
    cases = {
        ("--name", "a", "--app", "slug=web,healthcheck=http://x/"): (
            "--app: unknown key 'healthcheck' (did you mean 'healthcheck-url'?)"
        ),
        ("--name", "b", "--env", "EDITOR"): "--env 'EDITOR': expected KEY=VALUE",
        ("--name", "c", "--app", "slug=web,external=yes"): (
            "--app external: expected true or false, got 'yes'"
        ),
    }
    for args, message in cases.items():
        result = await wsagent(*base, *args)
        assert result.code == 1, (args, result)
        assert result.stderr.splitlines() == [f"wsagent admin: error: {message}"], args
    assert await admin(data, "workspace", "list") == []


@pytest.mark.e2e
async def test_a_mistyped_data_dir_is_an_error_not_a_new_database(tmp_path: Path) -> None:
    """Only `user create`, `apply` and `--init` create a database; every other command
    names the database it looked for. Human output says which database was opened."""
    data = tmp_path / "data"
    await admin(data, "user", "create", "alice")
    typo = tmp_path / "dta"
    result = await wsagent("admin", "--data-dir", str(typo), "user", "list")
    assert result.code == 1
    assert result.stderr.splitlines() == [
        f"wsagent admin: error: no database at {typo / 'wsagent.db'} (is --data-dir right?);"
        " create one with `wsagent admin --init`, `user create` or `apply`"
    ]
    assert not typo.exists()

    listed = await wsagent("admin", "--data-dir", str(data), "user", "list")
    assert listed.code == 0
    assert listed.stdout.splitlines()[0] == f"database: {data / 'wsagent.db'}"
    assert "alice" in listed.stdout and not listed.stdout.lstrip().startswith(("[", "{"))
    # --json after the command as well as before it.
    assert [
        u["name"]
        for u in json.loads(
            (await wsagent("admin", "--data-dir", str(data), "user", "list", "--json")).stdout
        )
    ] == ["alice"]

    init = await wsagent("admin", "--data-dir", str(typo), "--init", "--json")
    assert init.code == 0 and init.json == {"database": str(typo / "wsagent.db"), "ok": True}
    assert await admin(typo, "user", "list") == []

    a_file = tmp_path / "file"
    a_file.write_text("")
    result = await wsagent("admin", "--data-dir", str(a_file), "user", "create", "bob")
    assert result.code == 1
    assert result.stderr.splitlines() == [
        f"wsagent admin: error: data directory {a_file} is not a directory"
    ]


@pytest.mark.e2e
async def test_reapplying_a_changed_workspace_says_it_was_not_rebuilt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    spec = tmp_path / "workspaces.toml"
    spec.write_text(WORKSPACE_FILE)
    await admin(data, "apply", str(spec))
    spec.write_text(
        WORKSPACE_FILE.replace(
            'startup_script = "echo ready"', 'startup_script = "echo hi"'
        ).replace("connection_timeout = 60", "connection_timeout = 90")
    )
    again = await admin(data, "apply", str(spec))
    assert again["agents"] == []
    assert again["not_rebuilt"] == [
        {
            "workspace": "dev",
            "owner": "alice",
            "status": "exists, not rebuilt",
            "differs": [
                "agents.main.connection_timeout_seconds",
                "agents.main.startup_script",
            ],
        }
    ]
    human = await wsagent("admin", "--data-dir", str(data), "apply", str(spec))
    assert human.code == 0
    assert "exists, not rebuilt" in human.stdout
    assert "agents.main.startup_script" in human.stdout
