"""Administration operations over the store: users, workspaces, agents, git auth, and the
declarative workspace file. The CLI, the demo and the tests all go through these."""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from agent.sdk.agentmetadata import KEY_PATTERN, MetadataDescription
from agent.sdk.models import SHARING_LEVELS
from controlplane import speckeys
from controlplane.gitauth import credential_for
from controlplane.passwords import PasswordError, hash_password
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


def check_keys(raw: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    """A key the declaration does not know is an error naming it and the nearest valid
    one, never silently ignored."""
    key = speckeys.first_unknown(raw, allowed)
    if key is not None:
        raise SpecError(speckeys.unknown_key_message(key, allowed, where))


def unknown_value(where: str, value: str, allowed: frozenset[str]) -> str:
    hint = speckeys.nearest(value, allowed)
    suggestion = f" (did you mean {hint!r}?)" if hint else ""
    return f"{where}: {value!r} is not one of {sorted(allowed)}{suggestion}"


def app_spec(raw: dict[str, Any], where: str) -> AppSpec:
    _expect(raw, dict, where)
    check_keys(raw, speckeys.APP_KEYS, where)
    slug = _expect(raw.get("slug", ""), str, f"{where}.slug")
    if not slug:
        raise SpecError(f"{where}.slug: required")
    health = _expect(raw.get("healthcheck", {}), dict, f"{where}.healthcheck")
    check_keys(health, speckeys.HEALTHCHECK_KEYS, f"{where}.healthcheck")
    sharing = _expect(raw.get("sharing_level", "owner"), str, f"{where}.sharing_level")
    if sharing not in SHARING_LEVELS:
        raise SpecError(unknown_value(f"{where}.sharing_level", sharing, SHARING_LEVELS))
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


# Each key is a command the agent runs on its interval: a template with hundreds would be a
# mistake, and every key costs a row and a post per interval.
MAX_METADATA_KEYS = 32
MAX_METADATA_SECONDS = 86400


def metadata_spec(raw: object, where: str) -> tuple[MetadataDescription, ...]:
    items = _expect(raw, list, where)
    if len(items) > MAX_METADATA_KEYS:
        raise SpecError(f"{where}: at most {MAX_METADATA_KEYS} entries")
    out: list[MetadataDescription] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        _expect(item, dict, at)
        check_keys(item, speckeys.METADATA_KEYS, at)
        key = _expect(item.get("key", ""), str, f"{at}.key")
        if not KEY_PATTERN.fullmatch(key):
            raise SpecError(f"{at}.key: 1-128 of letters, digits, '_', '.', '-'")
        if any(m.key == key for m in out):
            raise SpecError(f"{at}.key: {key!r} appears twice")
        seconds = {}
        for name in ("interval", "timeout"):
            value = _expect(item.get(name, 0), int, f"{at}.{name}")
            if isinstance(value, bool) or not 0 <= value <= MAX_METADATA_SECONDS:
                raise SpecError(f"{at}.{name}: whole seconds between 0 and {MAX_METADATA_SECONDS}")
            seconds[name] = value
        out.append(
            MetadataDescription(
                key=key,
                script=_expect(item.get("script", ""), str, f"{at}.script"),
                interval=seconds["interval"],
                timeout=seconds["timeout"],
                display_name=_expect(item.get("display_name", key), str, f"{at}.display_name"),
            )
        )
    return tuple(out)


def _timeout_seconds(value: object, where: str) -> float:
    seconds = _expect(value, (int, float), where)
    if isinstance(seconds, bool) or seconds < 0 or seconds != seconds or seconds > 86400 * 365:
        raise SpecError(f"{where}: must be a number of seconds between 0 and one year")
    return int(seconds) if float(seconds).is_integer() else float(seconds)


def agent_spec(raw: dict[str, Any], where: str = "agent") -> AgentSpec:
    """Build an AgentSpec from a declaration (workspace file, CLI flags or tests)."""
    _expect(raw, dict, where)
    check_keys(raw, speckeys.AGENT_KEYS, where)
    name = valid_name(_expect(raw.get("name", "main"), str, f"{where}.name"), f"{where}.name")
    auth = _expect(raw.get("auth", "token"), str, f"{where}.auth")
    if auth not in AUTH_KINDS:
        raise SpecError(unknown_value(f"{where}.auth", auth, AUTH_KINDS))
    instance_id = _expect(raw.get("instance_id", ""), str, f"{where}.instance_id")
    if auth != "token" and not instance_id:
        raise SpecError(f"{where}.instance_id: required for {auth}")
    env = _expect(raw.get("env", raw.get("environment_variables", {})), dict, f"{where}.env")
    for key, value in env.items():
        _expect(value, str, f"{where}.env.{key}")
    apps = _expect(raw.get("apps", []), list, f"{where}.apps")
    timeout = raw.get("startup_script_timeout_seconds", raw.get("startup_script_timeout", 0))
    stop_timeout = raw.get("shutdown_script_timeout_seconds", raw.get("shutdown_script_timeout", 0))
    return AgentSpec(
        name=name,
        auth=auth,
        instance_id=instance_id,
        startup_script=_expect(raw.get("startup_script", ""), str, f"{where}.startup_script"),
        startup_script_timeout_seconds=_timeout_seconds(timeout, f"{where}.startup_script_timeout"),
        shutdown_script=_expect(raw.get("shutdown_script", ""), str, f"{where}.shutdown_script"),
        shutdown_script_timeout_seconds=_timeout_seconds(
            stop_timeout, f"{where}.shutdown_script_timeout"
        ),
        directory=_expect(raw.get("directory", ""), str, f"{where}.directory"),
        environment_variables=dict(env),
        motd_file=_expect(raw.get("motd_file", ""), str, f"{where}.motd_file"),
        apps=tuple(app_spec(a, f"{where}.apps[{i}]") for i, a in enumerate(apps)),
        metadata=metadata_spec(raw.get("metadata", []), f"{where}.metadata"),
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


async def create_user(
    store: Store, name: str, email: str = "", password: str | None = None
) -> tuple[UserRecord, str]:
    valid_name(name, "user name")
    password_hash = await _hash(password) if password is not None else ""
    user = await store.create_user(name, email)
    if password_hash:
        await store.set_password_hash(user.id, password_hash)
    return user, await store.create_user_token(user.id)


async def _hash(password: str) -> str:
    try:
        # Slow on purpose (scrypt); off the event loop.
        return await asyncio.to_thread(hash_password, password)
    except PasswordError as exc:
        raise SpecError(f"password: {exc}") from None


async def set_password(store: Store, name: str, password: str) -> UserRecord:
    user = await require_user(store, name)
    await store.set_password_hash(user.id, await _hash(password))
    return user


async def revoke_user_tokens(store: Store, name: str) -> tuple[UserRecord, int]:
    """Revoke every session of the user; a running server closes their sockets."""
    user = await require_user(store, name)
    return user, await store.revoke_user_tokens(user.id)


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
    check_gitauth_provider(provider, where)
    await store.upsert_gitauth_provider(provider)


def check_gitauth_provider(provider: GitAuthProvider, where: str) -> None:
    if not provider.id or not provider.regex:
        raise SpecError(f"{where}: id and regex are required")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", provider.id):
        # The id is a path segment of <access URL>/gitauth/<id>, and with several replicas
        # it rides in the NOTIFY that wakes other replicas' waiters (8,000 bytes at most).
        raise SpecError(
            f"{where}.id: at most 64 letters, digits, '.', '_' and '-': {provider.id[:80]!r}"
        )
    try:
        re.compile(provider.regex)
    except re.error as exc:
        raise SpecError(f"{where}.regex: {exc}") from None


@dataclass
class ApplyResult:
    users: dict[str, str] = field(default_factory=dict)  # name -> new session token
    agents: list[dict[str, str]] = field(default_factory=list)
    # Workspaces that exist and differ from the file: they are not rebuilt.
    not_rebuilt: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "agents": self.agents, "not_rebuilt": self.not_rebuilt}


def load_spec_file(path: Path) -> dict[str, Any]:
    text = path.read_bytes()
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from None
    return _expect(data, dict, str(path))  # type: ignore[no-any-return]


@dataclass
class _Credential:
    user: str
    token: str
    username: str
    password: str


@dataclass
class _Plan:
    """A whole workspace file, checked before anything is written."""

    users: list[tuple[str, str]] = field(default_factory=list)
    providers: list[tuple[GitAuthProvider, list[_Credential]]] = field(default_factory=list)
    workspaces: list[tuple[str, str, list[AgentSpec], str]] = field(default_factory=list)


def _str_field(raw: dict[str, Any], key: str, where: str) -> str:
    return _expect(raw.get(key, ""), str, f"{where}.{key}")  # type: ignore[no-any-return]


def plan_spec(data: dict[str, Any]) -> _Plan:
    """Check every key and value of a workspace file. Pure: raises SpecError naming the
    first problem."""
    check_keys(data, speckeys.TOP_KEYS, "")
    plan = _Plan()
    for i, raw in enumerate(_expect(data.get("users", []), list, "users")):
        where = f"users[{i}]"
        check_keys(_expect(raw, dict, where), speckeys.USER_KEYS, where)
        name = valid_name(_str_field(raw, "name", where), f"{where}.name")
        if any(name == known for known, _ in plan.users):
            raise SpecError(f"{where}.name: user {name!r} is declared twice")
        plan.users.append((name, _str_field(raw, "email", where)))
    for i, raw in enumerate(_expect(data.get("gitauth", []), list, "gitauth")):
        where = f"gitauth[{i}]"
        check_keys(_expect(raw, dict, where), speckeys.GITAUTH_KEYS, where)
        provider = GitAuthProvider(
            id=_str_field(raw, "id", where),
            regex=_str_field(raw, "regex", where),
            type=_str_field(raw, "type", where),
        )
        check_gitauth_provider(provider, where)
        credentials = []
        for j, cred in enumerate(_expect(raw.get("credentials", []), list, f"{where}.credentials")):
            cwhere = f"{where}.credentials[{j}]"
            check_keys(_expect(cred, dict, cwhere), speckeys.CREDENTIAL_KEYS, cwhere)
            credential = _Credential(
                *(_str_field(cred, k, cwhere) for k in ("user", "token", "username", "password"))
            )
            if not credential.user:
                raise SpecError(f"{cwhere}.user: required")
            if not (credential.token or credential.username or credential.password):
                raise SpecError(f"{cwhere}: give a token, or a username and password")
            credentials.append(credential)
        plan.providers.append((provider, credentials))
    for i, raw in enumerate(_expect(data.get("workspaces", []), list, "workspaces")):
        where = f"workspaces[{i}]"
        check_keys(_expect(raw, dict, where), speckeys.WORKSPACE_KEYS, where)
        owner = _str_field(raw, "owner", where)
        name = valid_name(_str_field(raw, "name", where), f"{where}.name")
        agents_raw = _expect(raw.get("agents", []), list, f"{where}.agents")
        specs = [agent_spec(a, f"{where}.agents[{j}]") for j, a in enumerate(agents_raw)]
        if not specs:
            raise SpecError(f"{where}.agents: a workspace needs at least one agent")
        names = [a.name for a in specs]
        if len(set(names)) != len(names):
            raise SpecError(f"{where}.agents: agent names must be unique: {names}")
        plan.workspaces.append((owner, name, specs, where))
    return plan


def spec_differences(stored: list[AgentSpec], declared: list[AgentSpec]) -> list[str]:
    """What differs between a workspace's agents and a declaration of them, as
    ``agents.<name>.<field>`` (and ``agents.<name>`` for one added or removed). Pure."""
    old = {a.name: a for a in stored}
    new = {a.name: a for a in declared}
    out = [f"agents.{n} (not in the file)" for n in old if n not in new]
    out += [f"agents.{n} (new in the file)" for n in new if n not in old]
    for name in new.keys() & old.keys():
        out += [
            f"agents.{name}.{f.name}"
            for f in fields(AgentSpec)
            if getattr(old[name], f.name) != getattr(new[name], f.name)
        ]
    return sorted(out)


async def apply_spec(store: Store, data: dict[str, Any]) -> ApplyResult:
    """Create what the declaration names and does not exist yet. Safe to apply twice.

    The whole file is checked first (keys, values, owners, credential users), so a file
    with a mistake writes nothing. A workspace that exists is not rebuilt; when the file
    declares it differently the result says which fields differ.
    """
    plan = plan_spec(data)
    result = ApplyResult()
    new_users = [(n, e) for n, e in plan.users if await store.get_user_by_name(n) is None]
    known = {n for n, _ in plan.users}
    for provider, credentials in plan.providers:
        for credential in credentials:
            if (
                credential.user not in known
                and await store.get_user_by_name(credential.user) is None
            ):
                raise NotFound(f"gitauth {provider.id!r}: user {credential.user!r} not found")
    for owner, _, _, where in plan.workspaces:
        if owner not in known and await store.get_user_by_name(owner) is None:
            raise NotFound(f"{where}.owner: user {owner!r} not found")

    for name, email in new_users:
        _, token = await create_user(store, name, email)
        result.users[name] = token
    for provider, credentials in plan.providers:
        await add_gitauth_provider(store, provider)
        for credential in credentials:
            await set_git_credential(
                store,
                provider.id,
                credential.user,
                token=credential.token,
                username=credential.username,
                password=credential.password,
            )
    for owner, name, specs, _ in plan.workspaces:
        user = await require_user(store, owner)
        existing = await store.get_workspace_by_name(user.id, name)
        if existing is not None:
            stored = [a.spec for a in await store.list_agents(existing.id)]
            differs = spec_differences(stored, specs)
            if differs:
                result.not_rebuilt.append(
                    {
                        "workspace": name,
                        "owner": owner,
                        "status": "exists, not rebuilt",
                        "differs": differs,
                    }
                )
            continue
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
