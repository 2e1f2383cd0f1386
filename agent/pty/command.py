"""What a terminal session runs: argv, environment, working directory and the MOTD banner.

As Coder's agent does (docs/protocol.md, "Reconnecting PTY on the agent"): an empty command
is the user's login shell as a login shell (``<shell> -l``), anything else runs as
``<shell> -c <command>``; sessions get ``TERM=xterm-256color`` on top of the session
environment. The MOTD is shown only for a login shell and only without ``~/.hushlogin``, each
line ending in CRLF because it goes straight to the terminal, not through the line
discipline.

The session environment, MOTD text and directory come from other components through the
callables given to :class:`CommandBuilder` (by agent/compose.py).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

TERM: Final = "xterm-256color"
FALLBACK_SHELL: Final = "/bin/sh"


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    banner: bytes = b""


def user_shell() -> str:
    """The current user's login shell from the passwd database, else ``$SHELL``, else sh."""
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    shell = shell or os.environ.get("SHELL", "")
    if not shell or not os.access(shell, os.X_OK):
        return FALLBACK_SHELL
    return shell


def home_dir() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.environ.get("HOME", "/")


def motd_banner(text: str) -> bytes:
    """MOTD text as it is written to a terminal: every line followed by CRLF."""
    if not text:
        return b""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8", "replace")


def _no_motd() -> str:
    return ""


def _no_directory() -> str:
    return ""


class CommandBuilder:
    def __init__(
        self,
        *,
        environment: Callable[[], Mapping[str, str]] = lambda: os.environ,
        motd: Callable[[], str] = _no_motd,
        directory: Callable[[], str] = _no_directory,
        shell: Callable[[], str] = user_shell,
        home: Callable[[], str] = home_dir,
    ) -> None:
        self._environment = environment
        self._motd = motd
        self._directory = directory
        self._shell = shell
        self._home = home

    def build(self, command: str) -> LaunchSpec:
        shell = self._shell()
        env = dict(self._environment())
        env["TERM"] = TERM
        home = self._home()
        cwd = self._directory() or home
        if command:
            return LaunchSpec((shell, "-c", command), env, cwd)
        banner = b""
        if not (Path(home) / ".hushlogin").exists():
            banner = motd_banner(self._motd())
        return LaunchSpec((shell, "-l"), env, cwd, banner)
