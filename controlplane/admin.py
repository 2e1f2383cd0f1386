"""Administration operations over the store: users, workspaces, agents, git auth, and the
declarative workspace file. The CLI, the demo and the tests all go through these."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.sdk.models import SHARING_LEVELS
from controlplane.gitauth import credential_for
from controlplane.store.base import NotFound, Store
from controlplane.store.records import (
    AUTH_KINDS,
    AgentSpec,
    AppSpec,
    CreatedAgent,
    GitAuthProvider,
    UserRecord,
    WorkspaceRecord,
)


class SpecError(ValueError):
    """A workspace declaration is invalid; the message names the field."""


def _expect(value: object, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SpecError(f"{where}: expected {names}, got {type(value).__name__}")
    return value


# Coder's rule for user, workspace and agent names. They become DNS labels in
# vscode_port_proxy_uri (<port>--<agent>--<workspace>--<owner>.<wildcard host>).
_NAME = re.compile(r"[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*")
MAX_NAME_LENGTH = 32


def valid_name(name: str, where: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise SpecError(
            f"{where}: {name[:40]!r} must be 1 to {MAX_NAME_LENGTH} letters, digits and"
            " single hyphens between them"
        )
    return name


def app_spec(raw: dict[str, Any], where: str) -> AppSpec:
    _expect(raw, dict, where)
    slug = _expect(raw.get("slug", ""), str, f"{where}.slug")
    if not slug:
        raise SpecError(f"{where}.slug: required")
    health = _expect(raw.get("healthcheck", {}), dict, f"{where}.healthcheck")
    sharing = _expect(raw.get("sharing_level", "owner"), str, f"{where}.sharing_level")
    if sharing not in SHARING_LEVELS:
        raise SpecError(f"{where}.sharing_level: must be one of {sorted(SHARING_LEVELS)}")
    return AppSpec(
        slug=slug,
        display_name=_expect(raw.get("display_name", slug), str, f"{where}.display_name"),
        url=_expect(raw.get("url", ""), str, f"{where}.url"),
        command=_expect(raw.get("command", ""), str, f"{where}.command"),
        icon=_expect(raw.get("icon", ""), str, f"{where}.icon"),
        external=_expect(raw.get("external", False), bool, f"{where}.external"),
        subdomain=_expect(raw.get("subdomain", False), bool, f"{where}.subdomain"),
        sharing_level=sharing,
        healthcheck_url=_expect(health.get("url", ""), str, f"{where}.healthcheck.url"),
        healthcheck_interval=_expect(
            health.get("interval", 0), int, f"{where}.healthcheck.interval"
        ),
        healthcheck_threshold=_expect(
            health.get("threshold", 0), int, f"{where}.healthcheck.threshold"
        ),
    )


def _timeout_seconds(value: object, where: str) -> float:
    seconds = _expect(value, (int, float), where)
    if isinstance(seconds, bool) or seconds < 0 or seconds != seconds or seconds > 86400 * 365:
        raise SpecError(f"{where}: must be a number of seconds between 0 and one year")
    return int(seconds) if float(seconds).is_integer() else float(seconds)


def agent_spec(raw: dict[str, Any], where: str = "agent") -> AgentSpec:
    """Build an AgentSpec from a declaration (workspace file, CLI flags or tests)."""
    _expect(raw, dict, where)
    name = valid_name(_expect(raw.get("name", "main"), str, f"{where}.name"), f"{where}.name")
    auth = _expect(raw.get("auth", "token"), str, f"{where}.auth")
    if auth not in AUTH_KINDS:
        raise SpecError(f"{where}.auth: must be one of {sorted(AUTH_KINDS)}")
    instance_id = _expect(raw.get("instance_id", ""), str, f"{where}.instance_id")
    if auth != "token" and not instance_id:
        raise SpecError(f"{where}.instance_id: required for {auth}")
    env = _expect(raw.get("env", raw.get("environment_variables", {})), dict, f"{where}.env")
    for key, value in env.items():
        _expect(value, str, f"{where}.env.{key}")
    apps = _expect(raw.get("apps", []), list, f"{where}.apps")
    timeout = raw.get("startup_script_timeout_seconds", raw.get("startup_script_timeout", 0))
    return AgentSpec(
        name=name,
        auth=auth,
        instance_id=instance_id,
        startup_script=_expect(raw.get("startup_script", ""), str, f"{where}.startup_script"),
        startup_script_timeout_seconds=_timeout_seconds(timeout, f"{where}.startup_script_timeout"),
        directory=_expect(raw.get("directory", ""), str, f"{where}.directory"),
        environment_variables=dict(env),
        motd_file=_expect(raw.get("motd_file", ""), str, f"{where}.motd_file"),
        apps=tuple(app_spec(a, f"{where}.apps[{i}]") for i, a in enumerate(apps)),
        connection_timeout_seconds=_expect(
            raw.get("connection_timeout_seconds", raw.get("connection_timeout", 120)),
            int,
            f"{where}.connection_timeout",
        ),
        troubleshooting_url=_expect(
            raw.get("troubleshooting_url", ""), str, f"{where}.troubleshooting_url"
        ),
        login_before_ready=_expect(
            raw.get("login_before_ready", True), bool, f"{where}.login_before_ready"
        ),
    )


async def require_user(store: Store, name: str) -> UserRecord:
    user = await store.get_user_by_name(name)
    if user is None:
        raise NotFound(f"user {name!r} not found")
    return user


async def create_user(store: Store, name: str, email: str = "") -> tuple[UserRecord, str]:
    user = await store.create_user(valid_name(name, "user name"), email)
    return user, await store.create_user_token(user.id)


async def create_workspace(
    store: Store, owner: str, name: str, agents: list[AgentSpec]
) -> tuple[WorkspaceRecord, list[CreatedAgent]]:
    valid_name(name, "workspace name")
    if not agents:
        raise SpecError("a workspace needs at least one agent")
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise SpecError(f"agent names must be unique: {names}")
    user = await require_user(store, owner)
    workspace = await store.create_workspace(user.id, name)
    created = await store.create_build(workspace.id, agents)
    return workspace, created


async def set_git_credential(
    store: Store,
    provider_id: str,
    user_name: str,
    *,
    token: str = "",
    username: str = "",
    password: str = "",
) -> None:
    providers = {p.id: p for p in await store.list_gitauth_providers()}
    provider = providers.get(provider_id)
    if provider is None:
        raise NotFound(f"git auth provider {provider_id!r} not found")
    user = await require_user(store, user_name)
    if token:
        username, password = credential_for(provider.type, token)
    if not username and not password:
        raise SpecError("give a token, or a username and password")
    await store.set_gitauth_link(provider_id, user.id, username, password)


async def add_gitauth_provider(
    store: Store, provider: GitAuthProvider, where: str = "provider"
) -> None:
    """Create or update a provider; a regex that does not compile is refused here, not
    silently skipped at match time (agents would get 404 for every URL)."""
    if not provider.id or not provider.regex:
        raise SpecError(f"{where}: id and regex are required")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", provider.id):
        # The id is a path segment of <access URL>/gitauth/<id>.
        raise SpecError(f"{where}.id: letters, digits, '.', '_' and '-' only: {provider.id!r}")
    try:
        re.compile(provider.regex)
    except re.error as exc:
        raise SpecError(f"{where}.regex: {exc}") from None
    await store.upsert_gitauth_provider(provider)


@dataclass
class ApplyResult:
    users: dict[str, str] = field(default_factory=dict)  # name -> new session token
    agents: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "agents": self.agents}


def load_spec_file(path: Path) -> dict[str, Any]:
    text = path.read_bytes()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from None
    return _expect(data, dict, str(path))  # type: ignore[no-any-return]


async def apply_spec(store: Store, data: dict[str, Any]) -> ApplyResult:
    """Create what the declaration names and does not exist yet. Safe to apply twice."""
    result = ApplyResult()
    for i, raw in enumerate(_expect(data.get("users", []), list, "users")):
        name = _expect(_expect(raw, dict, f"users[{i}]").get("name", ""), str, f"users[{i}].name")
        if not name:
            raise SpecError(f"users[{i}].name: required")
        if await store.get_user_by_name(name) is None:
            _, token = await create_user(store, name, str(raw.get("email", "")))
            result.users[name] = token
    for i, raw in enumerate(_expect(data.get("gitauth", []), list, "gitauth")):
        where = f"gitauth[{i}]"
        _expect(raw, dict, where)
        provider = GitAuthProvider(
            id=_expect(raw.get("id", ""), str, f"{where}.id"),
            regex=_expect(raw.get("regex", ""), str, f"{where}.regex"),
            type=_expect(raw.get("type", ""), str, f"{where}.type"),
        )
        await add_gitauth_provider(store, provider, where)
        for j, cred in enumerate(_expect(raw.get("credentials", []), list, f"{where}.credentials")):
            _expect(cred, dict, f"{where}.credentials[{j}]")
            await set_git_credential(
                store,
                provider.id,
                str(cred.get("user", "")),
                token=str(cred.get("token", "")),
                username=str(cred.get("username", "")),
                password=str(cred.get("password", "")),
            )
    for i, raw in enumerate(_expect(data.get("workspaces", []), list, "workspaces")):
        where = f"workspaces[{i}]"
        _expect(raw, dict, where)
        owner = _expect(raw.get("owner", ""), str, f"{where}.owner")
        name = _expect(raw.get("name", ""), str, f"{where}.name")
        user = await require_user(store, owner)
        if await store.get_workspace_by_name(user.id, name) is not None:
            continue
        agents_raw = _expect(raw.get("agents", []), list, f"{where}.agents")
        specs = [agent_spec(a, f"{where}.agents[{j}]") for j, a in enumerate(agents_raw)]
        workspace, created = await create_workspace(store, owner, name, specs)
        for c in created:
            result.agents.append(
                {
                    "workspace": workspace.name,
                    "owner": owner,
                    "agent": c.record.name,
                    "agent_id": c.record.id,
                    "auth": c.record.auth_kind,
                    "token": c.token,
                }
            )
    return result
