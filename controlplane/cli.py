"""``wsagent server``, ``wsagent admin ...``, ``wsagent demo`` and ``wsagent terminal``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controlplane.cliargs import (
    configure_logging,
    default_data_dir,
    metrics_address,
    parse_address,
    parse_seconds,
)
from controlplane.identity.config import add_identity_flags, identity_config_from_args

EXIT_USAGE = 2


def server_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsagent server", description="Run the reference control plane."
    )
    p.add_argument(
        "--address",
        type=parse_address,
        default=("127.0.0.1", 3000),
        help="HOST:PORT (default 127.0.0.1:3000)",
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, help="state directory (env WSAGENT_DATA_DIR)"
    )
    p.add_argument("--access-url", default="", help="URL agents and users reach this server at")
    p.add_argument(
        "--wildcard-access-url", default="", help="e.g. *.apps.example.com (VS Code port proxy)"
    )
    p.add_argument(
        "--tls-cert", type=Path, default=None, help="PEM certificate (chain) to serve TLS"
    )
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    p.add_argument(
        "--stats-interval",
        type=parse_seconds,
        default=600.0,
        help="agents' report_interval (default 10m)",
    )
    p.add_argument(
        "--stats-min-spacing",
        type=parse_seconds,
        default=None,
        help="store at most one stats report per agent this often, merging extras "
        "(default 90%% of --stats-interval; 0 stores every report)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=parse_seconds,
        default=3.0,
        help="agent connection refresh (default 3s)",
    )
    p.add_argument(
        "--durability",
        choices=("normal", "full"),
        default="normal",
        help="SQLite synchronous mode: normal survives kill -9, full also power loss",
    )
    p.add_argument(
        "--metrics-address",
        default="127.0.0.1:2114",
        help="HOST:PORT of the Prometheus endpoint; empty or off disables (default 127.0.0.1:2114)",
    )
    p.add_argument(
        "--apply",
        type=Path,
        action="append",
        default=[],
        help="apply a workspace file (TOML/JSON) at start",
    )
    add_identity_flags(p)
    return p


def server_config_from_args(args: argparse.Namespace) -> Any:
    from controlplane.config import ServerConfig

    if args.tls_cert and not args.tls_key:
        raise SystemExit("wsagent server: error: --tls-key is required with --tls-cert")
    host, port = args.address
    return ServerConfig(
        data_dir=args.data_dir or default_data_dir(),
        host=host,
        port=port,
        access_url=args.access_url,
        wildcard_access_url=args.wildcard_access_url,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        stats_report_interval=args.stats_interval,
        stats_min_spacing=args.stats_min_spacing,
        agent_heartbeat_interval=args.heartbeat_interval,
        durability=args.durability,
        identity=identity_config_from_args(args),
        metrics_address=metrics_address(args.metrics_address),
    )


def run_server(argv: Sequence[str]) -> int:
    args = server_parser().parse_args(argv)
    config = server_config_from_args(args)
    configure_logging()

    async def main() -> None:
        import signal

        from controlplane.admin import apply_spec, load_spec_file
        from controlplane.server import running

        # SIGTERM (systemd, docker stop) stops as cleanly as Ctrl-C: agents' sockets are
        # closed politely and their disconnected_at is written before the store closes.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running(config) as server:
            for path in args.apply:
                result = await apply_spec(server.store, load_spec_file(path))
                if result.users or result.agents:
                    print(json.dumps(result.to_json(), indent=2), flush=True)
            await stop.wait()

    from controlplane.admin import SpecError
    from controlplane.store.base import StoreError
    from controlplane.store.migrations import MigrationError

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (OSError, MigrationError, SpecError, StoreError) as exc:
        # A busy port, an unreadable data directory or a newer schema: one line, exit 1.
        print(f"wsagent server: error: {exc}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ admin


def admin_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsagent admin", description="Administer the control plane's data directory."
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, help="state directory (env WSAGENT_DATA_DIR)"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    sub = p.add_subparsers(dest="area", required=True)

    users = sub.add_parser("user", help="users and session tokens").add_subparsers(
        dest="action", required=True
    )
    u = users.add_parser("create", help="create a user and print a session token")
    u.add_argument("name")
    u.add_argument("--email", default="")
    t = users.add_parser("token", help="print a new session token for a user")
    t.add_argument("name")
    t.add_argument("--ttl", type=parse_seconds, default=None)
    users.add_parser("list")

    ws = sub.add_parser("workspace", help="workspaces and their agents").add_subparsers(
        dest="action", required=True
    )
    c = ws.add_parser("create", help="create a workspace with one agent (use `apply` for more)")
    c.add_argument("--owner", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--agent-name", default="main")
    c.add_argument("--auth", default="token")
    c.add_argument("--instance-id", default="")
    c.add_argument("--startup-script", default="")
    c.add_argument("--startup-script-timeout", type=float, default=0, help="seconds; 0 = none")
    c.add_argument("--directory", default="")
    c.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--motd-file", default="")
    c.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="slug=web,url=...,healthcheck-url=...,interval=5,threshold=3",
    )
    c.add_argument("--connection-timeout", type=int, default=120, help="seconds")
    c.add_argument("--troubleshooting-url", default="")
    c.add_argument("--login-before-ready", action=argparse.BooleanOptionalAction, default=True)
    ws.add_parser("list")

    ag = sub.add_parser("agent", help="agent tokens").add_subparsers(dest="action", required=True)
    r = ag.add_parser("rotate-token", help="revoke all tokens of an agent and print a new one")
    r.add_argument("agent_id")
    rv = ag.add_parser("revoke-tokens", help="revoke all tokens of an agent")
    rv.add_argument("agent_id")

    ga = sub.add_parser("gitauth", help="git authentication providers").add_subparsers(
        dest="action", required=True
    )
    a = ga.add_parser("add-provider")
    a.add_argument("--id", required=True)
    a.add_argument("--regex", required=True)
    a.add_argument("--type", default="", help="github, gitlab, bitbucket, azure-devops ...")
    s = ga.add_parser("set-credential")
    s.add_argument("--provider", required=True)
    s.add_argument("--user", required=True)
    s.add_argument("--token", default="")
    s.add_argument("--username", default="")
    s.add_argument("--password", default="")
    ga.add_parser("list")

    key = sub.add_parser("gitsshkey", help="per-user git SSH keys").add_subparsers(
        dest="action", required=True
    )
    for action in ("show", "regenerate"):
        k = key.add_parser(action)
        k.add_argument("--user", required=True)

    ap = sub.add_parser("apply", help="apply a declarative workspace file (TOML or JSON)")
    ap.add_argument("file", type=Path)
    return p


def _app_flag(text: str) -> dict[str, Any]:
    from controlplane.admin import SpecError

    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    health = {}
    if "healthcheck-url" in fields:

        def seconds(key: str, default: str) -> int:
            value = fields.pop(key, default)
            try:
                return int(value)
            except ValueError:
                # A typo in a flag is a usage error, not a traceback.
                raise SpecError(f"--app {key}: expected an integer, got {value!r}") from None

        health = {
            "url": fields.pop("healthcheck-url"),
            "interval": seconds("interval", "5"),
            "threshold": seconds("threshold", "3"),
        }
    return {**fields, "healthcheck": health}


async def run_admin_command(args: argparse.Namespace) -> Any:
    from controlplane import admin
    from controlplane.store.records import GitAuthProvider
    from controlplane.store.sqlite import SQLiteStore

    store = await SQLiteStore.open(args.data_dir or default_data_dir())
    try:
        match (args.area, getattr(args, "action", None)):
            case ("user", "create"):
                user, token = await admin.create_user(store, args.name, args.email)
                return {"id": user.id, "name": user.name, "session_token": token}
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
                env = dict(e.split("=", 1) for e in args.env if "=" in e)
                spec = admin.agent_spec(
                    {
                        "name": args.agent_name,
                        "auth": args.auth,
                        "instance_id": args.instance_id,
                        "startup_script": args.startup_script,
                        "startup_script_timeout": args.startup_script_timeout,
                        "directory": args.directory,
                        "env": env,
                        "motd_file": args.motd_file,
                        "apps": [_app_flag(a) for a in args.app],
                        "connection_timeout": args.connection_timeout,
                        "troubleshooting_url": args.troubleshooting_url,
                        "login_before_ready": args.login_before_ready,
                    }
                )
                workspace, created = await admin.create_workspace(
                    store, args.owner, args.name, [spec]
                )
                return {
                    "workspace_id": workspace.id,
                    "agents": [
                        {"name": c.record.name, "agent_id": c.record.id, "token": c.token}
                        for c in created
                    ],
                }
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
        raise SystemExit(f"wsagent admin: unknown command {args.area} {args.action}")
    finally:
        await store.close()


def print_result(result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, dict):
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value, indent=2)
        print(f"{key}: {value}")


def run_admin(argv: Sequence[str]) -> int:
    from controlplane.admin import SpecError
    from controlplane.store.base import StoreError

    args = admin_parser().parse_args(argv)
    try:
        result = asyncio.run(run_admin_command(args))
    except (StoreError, SpecError, OSError) as exc:
        print(f"wsagent admin: error: {exc}", file=sys.stderr)
        return 1
    print_result(result, args.json)
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"server": run_server, "admin": run_admin}


def main(command: str, argv: Sequence[str]) -> int:
    if command == "demo":
        from controlplane.demo import run_demo

        return run_demo(argv)
    if command == "terminal":
        try:
            from controlplane.terminal import main as terminal_main
        except ImportError:
            print("wsagent terminal: not available in this build", file=sys.stderr)
            return EXIT_USAGE
        result: int = terminal_main(argv)
        return result
    handler = COMMANDS.get(command)
    if handler is None:
        print(f"wsagent: unknown command {command!r}", file=sys.stderr)
        return EXIT_USAGE
    return handler(argv)
