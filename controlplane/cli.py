"""``wsagent server``, ``wsagent admin ...``, ``wsagent demo`` and ``wsagent terminal``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controlplane.cliargs import (
    OneLineParser,
    add_database_flags,
    check_data_dir,
    configure_logging,
    default_data_dir,
    metrics_address,
    parse_address,
    parse_seconds,
)
from controlplane.identity.config import add_identity_flags, identity_config_from_args

EXIT_USAGE = 2


def server_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="wsagent server", description="Run the reference control plane.")
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
    add_database_flags(p)
    p.add_argument(
        "--replica-id",
        default=os.environ.get("WSAGENT_REPLICA_ID", ""),
        help="this replica's stable name (env WSAGENT_REPLICA_ID; default host:port)",
    )
    p.add_argument(
        "--replica-url",
        default=os.environ.get("WSAGENT_REPLICA_URL", ""),
        help="URL other replicas and agents' terminal dial-backs reach THIS replica at"
        " (env WSAGENT_REPLICA_URL; default from --address)",
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
        database_url=args.database_url,
        replica_id=args.replica_id,
        replica_url=args.replica_url,
        identity=identity_config_from_args(args),
        metrics_address=metrics_address(args.metrics_address),
    )


def event_loop_factory(
    environ: Mapping[str, str],
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """asyncio's event loop, or uvloop's on request: ``WSAGENT_EVENT_LOOP=uvloop`` (it must
    be installed: ``pip install 'wsagent[fast]'``) or ``auto`` (uvloop if installed). uvloop
    cut the CPU per request, but one overloaded run reset connections that asyncio's loop
    did not, so it is not the default (docs/benchmarks.md, "Control plane")."""
    choice = environ.get("WSAGENT_EVENT_LOOP", "asyncio")
    if choice not in ("auto", "uvloop", "asyncio"):
        raise SystemExit(
            f"wsagent server: WSAGENT_EVENT_LOOP must be auto, uvloop or asyncio, not {choice!r}"
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "wsagent server: WSAGENT_EVENT_LOOP=uvloop but uvloop is not installed"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_server(argv: Sequence[str]) -> int:
    args = server_parser().parse_args(argv)
    config = server_config_from_args(args)
    configure_logging()

    async def main() -> None:
        import signal

        from controlplane.admin import apply_spec, load_spec_file
        from controlplane.collector import tune_for_serving
        from controlplane.server import running

        # SIGTERM (systemd, docker stop) stops as cleanly as Ctrl-C: agents' sockets are
        # closed politely and their disconnected_at is written before the store closes.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running(config) as server:
            tune_for_serving()
            for path in args.apply:
                result = await apply_spec(server.store, load_spec_file(path))
                if result.users or result.agents or result.not_rebuilt:
                    print(json.dumps(result.to_json(), indent=2), flush=True)
            await stop.wait()

    from controlplane.admin import SpecError
    from controlplane.store.base import StoreError
    from controlplane.store.migrations import MigrationError

    try:
        if not config.database_url:
            check_data_dir(config.data_dir)
        with asyncio.Runner(loop_factory=event_loop_factory(os.environ)) as runner:
            runner.run(main())
    except KeyboardInterrupt:
        pass
    except (OSError, MigrationError, SpecError, StoreError) as exc:
        # A busy port, an unreadable data directory or a newer schema: one line, exit 1.
        print(f"wsagent server: error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_admin(argv: Sequence[str]) -> int:
    from controlplane.admin_cli import run_admin as run

    return run(argv)


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
