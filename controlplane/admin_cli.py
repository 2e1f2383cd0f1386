"""``wsagent admin``: users, workspaces, agent tokens and git auth in the data directory.

Output is human-readable by default and JSON with ``--json`` (before or after the
command). A mistake (an unknown key, a flag without its value, a database that does not
exist) is one line on stderr and exit code 1, with nothing written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from controlplane.admin import SpecError
from controlplane.cliargs import (
    OneLineParser,
    add_database_flags,
    check_data_dir,
    default_data_dir,
    parse_seconds,
)
from controlplane.speckeys import APP_KEYS, nearest

# Commands that may create the database; every other one needs an existing database, so a
# mistyped --data-dir is an error instead of a new, empty database.
CREATES_DATABASE: Final = frozenset({("user", "create"), ("apply", None)})

# ``--app`` keys: the workspace file's app keys, with the health check flattened.
APP_FLAG_KEYS: Final = (APP_KEYS - {"healthcheck"}) | {"healthcheck-url", "interval", "threshold"}
_BOOLEAN_APP_KEYS: Final = frozenset({"external", "subdomain"})


def _json_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the command it sets the value, absent it leaves the top-level one.
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def admin_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="wsagent admin", description="Administer the control plane's data directory."
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory holding wsagent.db (env WSAGENT_DATA_DIR, "
        "default ~/.local/share/wsagent)",
    )
    add_database_flags(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument(
        "--init", action="store_true", help="create the database if it does not exist yet"
    )
    sub = p.add_subparsers(
        dest="area", metavar="{user,workspace,agent,gitauth,gitsshkey,apply,migrate-store}"
    )

    def command(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text
        )
        _json_flag(parser)
        return parser

    def area(name: str, help_text: str) -> Any:
        return command(sub, name, help_text).add_subparsers(
            dest="action", required=True, metavar="ACTION"
        )

    users = area("user", "users and session tokens")
    u = command(users, "create", "create a user and print a session token")
    u.add_argument("name", help="user name (letters, digits and single hyphens)")
    u.add_argument("--email", default="", help="the user's email address")
    u.add_argument(
        "--password-stdin", action="store_true", help="read a sign-in password from stdin"
    )
    sp = command(users, "set-password", "set a user's sign-in password (stdin, or prompted)")
    sp.add_argument("name", help="user name")
    rt = command(
        users, "revoke-tokens", "revoke every session of a user and close their open sockets"
    )
    rt.add_argument("name", help="user name")
    t = command(users, "token", "print a new session token for a user")
    t.add_argument("name", help="user name")
    t.add_argument(
        "--ttl", type=parse_seconds, default=None, help="lifetime, e.g. 24h (default: none)"
    )
    command(users, "list", "list users")

    ws = area("workspace", "workspaces and their agents")
    c = command(ws, "create", "create a workspace with one agent (use `apply` for more)")
    c.add_argument("--owner", required=True, help="owning user's name")
    c.add_argument("--name", required=True, help="workspace name")
    c.add_argument("--agent-name", default="main", help="the agent's name (default main)")
    c.add_argument(
        "--auth",
        default="token",
        help="token, aws-instance-identity, google-instance-identity or azure-instance-identity",
    )
    c.add_argument("--instance-id", default="", help="cloud instance id (instance-identity auth)")
    c.add_argument("--startup-script", default="", help="shell script run when the agent starts")
    c.add_argument("--startup-script-timeout", type=float, default=0, help="seconds; 0 = none")
    c.add_argument("--shutdown-script", default="", help="shell script run when the agent stops")
    c.add_argument(
        "--shutdown-script-timeout",
        type=float,
        default=0,
        help="seconds; 0 = the agent's default, 300",
    )
    c.add_argument("--directory", default="", help="working directory of sessions (~ allowed)")
    c.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable (repeatable)",
    )
    c.add_argument("--motd-file", default="", help="file shown at login")
    c.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="slug=web,url=...,healthcheck-url=...,interval=5,threshold=3",
        help=f"an app (repeatable); keys: {', '.join(sorted(APP_FLAG_KEYS))}",
    )
    c.add_argument("--connection-timeout", type=int, default=120, help="seconds (default 120)")
    c.add_argument(
        "--troubleshooting-url", default="", help="link shown when the agent is unhealthy"
    )
    c.add_argument(
        "--login-before-ready",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="allow logins before the startup script is done",
    )
    command(ws, "list", "list workspaces and their agents")

    ag = area("agent", "agent tokens")
    r = command(ag, "rotate-token", "revoke all tokens of an agent and print a new one")
    r.add_argument("agent_id", help="the agent's id")
    rv = command(ag, "revoke-tokens", "revoke all tokens of an agent")
    rv.add_argument("agent_id", help="the agent's id")

    ga = area("gitauth", "git authentication providers")
    a = command(ga, "add-provider", "add or update a git auth provider")
    a.add_argument("--id", required=True, help="provider id (a path segment of /gitauth/<id>)")
    a.add_argument("--regex", required=True, help="regular expression matching repository URLs")
    a.add_argument("--type", default="", help="github, gitlab, bitbucket, azure-devops ...")
    s = command(ga, "set-credential", "store a user's credential for a provider")
    s.add_argument("--provider", required=True, help="provider id")
    s.add_argument("--user", required=True, help="user name")
    s.add_argument("--token", default="", help="access token (or --username and --password)")
    s.add_argument("--username", default="", help="basic-auth user name")
    s.add_argument("--password", default="", help="basic-auth password")
    command(ga, "list", "list providers")

    key = area("gitsshkey", "per-user git SSH keys")
    for action, text in (
        ("show", "print a user's public key"),
        ("regenerate", "replace a user's key"),
    ):
        k = command(key, action, text)
        k.add_argument("--user", required=True, help="user name")

    ap = command(sub, "apply", "apply a declarative workspace file (TOML or JSON)")
    ap.add_argument("file", type=Path, help="the workspace file")

    ms = command(
        sub,
        "migrate-store",
        "copy the SQLite database in --data-dir into an empty PostgreSQL database",
    )
    ms.add_argument("--to", required=True, metavar="postgres://...", help="the target database")
    return p


def read_password(*, confirm: bool) -> str:
    """One line from stdin when it is not a terminal; else a prompt (twice, to confirm)."""
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise SpecError("password: expected one line on stdin")
        return password
    import getpass

    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise SpecError("password: the two entries differ")
    return password


def app_flag(text: str) -> dict[str, Any]:
    """``--app slug=web,url=...`` as a workspace-file app; a typo is a SpecError."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise SpecError(f"--app: {part!r} is not KEY=VALUE (in {text!r})")
        if key not in APP_FLAG_KEYS:
            hint = nearest(key, APP_FLAG_KEYS)
            suggestion = (
                f"did you mean {hint!r}?" if hint else f"keys: {', '.join(sorted(APP_FLAG_KEYS))}"
            )
            raise SpecError(f"--app: unknown key {key!r} ({suggestion})")
        fields[key] = value
    app: dict[str, Any] = dict(fields)
    for key in _BOOLEAN_APP_KEYS & fields.keys():
        if fields[key].lower() not in ("true", "false"):
            raise SpecError(f"--app {key}: expected true or false, got {fields[key]!r}")
        app[key] = fields[key].lower() == "true"
    health: dict[str, Any] = {}
    for key in ("interval", "threshold"):
        if key in app:
            value = app.pop(key)
            try:
                health[key] = int(value)
            except ValueError:
                raise SpecError(f"--app {key}: expected an integer, got {value!r}") from None
    if "healthcheck-url" in app:
        health = {"interval": 5, "threshold": 3, **health, "url": app.pop("healthcheck-url")}
    elif health:
        raise SpecError("--app: interval and threshold need healthcheck-url")
    return {**app, "healthcheck": health}


def env_flag(values: list[str]) -> dict[str, str]:
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SpecError(f"--env {item!r}: expected KEY=VALUE")
        env[name] = value
    return env


def database_path(args: argparse.Namespace) -> str:
    """The database this command uses; an error (nothing created) when it does not exist
    and the command is not one that creates it. A PostgreSQL URL is shown without its
    password."""
    from controlplane.store.base import NotFound
    from controlplane.store.open import check_database_url, redact_url
    from controlplane.store.sqlite import DB_NAME

    if args.database_url:
        return redact_url(check_database_url(args.database_url))
    data_dir: Path = args.data_dir or default_data_dir()
    check_data_dir(data_dir)
    database = data_dir / DB_NAME
    if not database.exists() and not args.init and (args.area, args.action) not in CREATES_DATABASE:
        raise NotFound(
            f"no database at {database} (is --data-dir right?); create one with"
            " `wsagent admin --init`, `user create` or `apply`"
        )
    return str(database)


async def run_admin_command(args: argparse.Namespace, database: str) -> Any:
    from controlplane import admin
    from controlplane.store.open import open_store
    from controlplane.store.records import GitAuthProvider

    store = await open_store(args.data_dir or default_data_dir(), args.database_url, jobs=False)
    try:
        match (args.area, args.action):
            case (None, None):
                return {"database": database, "ok": True}
            case ("user", "create"):
                password = read_password(confirm=False) if args.password_stdin else None
                user, token = await admin.create_user(store, args.name, args.email, password)
                return {"id": user.id, "name": user.name, "session_token": token}
            case ("user", "set-password"):
                user = await admin.set_password(store, args.name, read_password(confirm=True))
                return {"name": user.name, "password_set": True}
            case ("user", "revoke-tokens"):
                user, count = await admin.revoke_user_tokens(store, args.name)
                return {"name": user.name, "revoked": count}
            case ("user", "token"):
                user = await admin.require_user(store, args.name)
                return {
                    "name": user.name,
                    "session_token": await store.create_user_token(user.id, args.ttl),
                }
            case ("user", "list"):
                return [
                    {"id": u.id, "name": u.name, "email": u.email} for u in await store.list_users()
                ]
            case ("workspace", "create"):
                return await _create_workspace(store, args)
            case ("workspace", "list"):
                out = []
                for w in await store.list_workspaces():
                    agents = await store.list_agents(w.id)
                    out.append(
                        {
                            "id": w.id,
                            "name": w.name,
                            "owner_id": w.owner_id,
                            "agents": [{"name": a.name, "agent_id": a.id} for a in agents],
                        }
                    )
                return out
            case ("agent", "rotate-token"):
                return {
                    "agent_id": args.agent_id,
                    "token": await store.rotate_agent_token(args.agent_id),
                }
            case ("agent", "revoke-tokens"):
                return {
                    "agent_id": args.agent_id,
                    "revoked": await store.revoke_agent_tokens(args.agent_id),
                }
            case ("gitauth", "add-provider"):
                await admin.add_gitauth_provider(
                    store, GitAuthProvider(args.id, args.regex, args.type), "--id/--regex"
                )
                return {"id": args.id, "regex": args.regex, "type": args.type}
            case ("gitauth", "set-credential"):
                await admin.set_git_credential(
                    store,
                    args.provider,
                    args.user,
                    token=args.token,
                    username=args.username,
                    password=args.password,
                )
                return {"provider": args.provider, "user": args.user, "ok": True}
            case ("gitauth", "list"):
                return [
                    {"id": p.id, "regex": p.regex, "type": p.type}
                    for p in await store.list_gitauth_providers()
                ]
            case ("gitsshkey", "show" | "regenerate"):
                user = await admin.require_user(store, args.user)
                key = (
                    await store.regenerate_git_ssh_key(user.id)
                    if args.action == "regenerate"
                    else await store.git_ssh_key(user.id)
                )
                return {"user": user.name, "public_key": key.public_key.strip() if key else ""}
            case ("apply", _):
                result = await admin.apply_spec(store, admin.load_spec_file(args.file))
                return result.to_json()
        raise SpecError(f"unknown command {args.area} {args.action}")
    finally:
        await store.close()


async def _create_workspace(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    from controlplane import admin

    spec = admin.agent_spec(
        {
            "name": args.agent_name,
            "auth": args.auth,
            "instance_id": args.instance_id,
            "startup_script": args.startup_script,
            "startup_script_timeout": args.startup_script_timeout,
            "shutdown_script": args.shutdown_script,
            "shutdown_script_timeout": args.shutdown_script_timeout,
            "directory": args.directory,
            "env": env_flag(args.env),
            "motd_file": args.motd_file,
            "apps": [app_flag(a) for a in args.app],
            "connection_timeout": args.connection_timeout,
            "troubleshooting_url": args.troubleshooting_url,
            "login_before_ready": args.login_before_ready,
        }
    )
    workspace, created = await admin.create_workspace(store, args.owner, args.name, [spec])
    return {
        "workspace_id": workspace.id,
        "agents": [
            {"name": c.record.name, "agent_id": c.record.id, "token": c.token} for c in created
        ],
    }


def print_result(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    elif isinstance(result, list):
        print(_table(result))
    else:
        for key, value in result.items():
            if key == "not_rebuilt":
                value = [
                    f"{w['owner']}/{w['workspace']}: {w['status']}"
                    f" (differs: {', '.join(w['differs'])})"
                    for w in value
                ]
            text = _human(value)
            print(f"{key}:{text}" if text.startswith("\n") else f"{key}: {text}")


def _human(value: Any) -> str:
    if isinstance(value, list):
        if not value:
            return "(none)"
        return "".join(f"\n  - {_human(v)}" for v in value)
    if isinstance(value, dict):
        if not value:
            return "(none)"
        return ", ".join(f"{k}={_human(v)}" for k, v in value.items())
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    columns = list(rows[0])
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "-" if value in ("", None) else str(value)


def _migrate_store(args: argparse.Namespace) -> int:
    from controlplane.store.migrate_store import migrate_store
    from controlplane.store.open import check_database_url, redact_url

    data_dir: Path = args.data_dir or default_data_dir()
    counts = asyncio.run(migrate_store(data_dir, check_database_url(args.to)))
    result = {"from": str(data_dir), "to": redact_url(args.to), "rows": counts}
    print_result(result, args.json)
    return 0


def run_admin(argv: Sequence[str]) -> int:
    from controlplane.store.base import StoreError

    parser = admin_parser()
    args = parser.parse_args(argv)
    if args.area is None and not args.init:
        parser.error("a command is required (or --init to create the database)")
    args.action = getattr(args, "action", None)
    try:
        if args.area == "apply":
            # The whole file is checked before the database is even opened.
            from controlplane.admin import load_spec_file, plan_spec

            plan_spec(load_spec_file(args.file))
        if args.area == "migrate-store":
            return _migrate_store(args)
        database = database_path(args)
        result = asyncio.run(run_admin_command(args, database))
    except (StoreError, SpecError, OSError) as exc:
        print(f"wsagent admin: error: {exc}", file=sys.stderr)
        return 1
    if not args.json and not (isinstance(result, dict) and "database" in result):
        print(f"database: {database}")
    print_result(result, args.json)
    return 0
