"""Flag parsers and start-up helpers shared by the control plane's commands.

``cli.py`` (server, admin) and ``demo.py`` both use these; neither imports the other's
internals, and only ``cli.py`` dispatches to ``demo.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import NoReturn

from agent.sdk.errors import ConfigError
from agent.sdk.settings import parse_duration, parse_listen_address
from wscommon import logs


def default_data_dir() -> Path:
    env = os.environ.get("WSAGENT_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "wsagent"


def add_database_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=os.environ.get("WSAGENT_DATABASE_URL", ""),
        help="postgres://user@host/db: use PostgreSQL instead of SQLite in --data-dir"
        " (env WSAGENT_DATABASE_URL)",
    )


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port in {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, number


def parse_seconds(text: str) -> float:
    try:
        return parse_duration(text, "duration")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def metrics_address(text: str) -> tuple[str, int] | None:
    try:
        return parse_listen_address(text, "--metrics-address")
    except ConfigError as exc:
        raise SystemExit(f"wsagent server: error: {exc}") from None


def configure_logging() -> None:
    logs.configure(log_file=None, level=os.environ.get("WSAGENT_LOG_LEVEL", "info"))


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line (``prog: error: ...``, exit 2), not the whole usage
    first: the server's usage alone is twenty lines that bury the one that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def check_data_dir(path: Path) -> None:
    """A data directory that exists as something else is an error naming it."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"data directory {path} is not a directory")
