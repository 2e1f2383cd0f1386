"""Directory and variable expansion with Go's semantics (os.ExpandEnv), pure."""

from __future__ import annotations

import os
import posixpath
import pwd
import re
from collections.abc import Mapping
from typing import Final

# Go's os.Expand: $NAME, ${NAME}; unset variables become empty strings; a lone "$" stays.
_VAR: Final = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*|[*#$@!?\-0-9]))")


def expand_env(text: str, env: Mapping[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group(1) if m.group(1) is not None else m.group(2)
        return env.get(name, "")

    return _VAR.sub(replace, text)


def home_directory(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    home = env.get("HOME", "")
    if home:
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


def expand_directory(directory: str, env: Mapping[str, str] | None = None) -> str:
    """Expand a leading ``~`` to the home directory, then ``$VARS``; "" stays "".

    As Coder does (``filepath.Join(home, dir[1:])``): any leading ``~`` counts, so
    ``~src`` is ``<home>/src``, and that branch is cleaned (``~/a/../b/`` is ``<home>/b``).
    """
    env = os.environ if env is None else env
    if directory.startswith("~"):
        joined = posixpath.normpath(home_directory(env) + "/" + directory[1:])
        # normpath keeps a leading "//" (POSIX allows it a meaning); Go's Clean does not.
        directory = "/" + joined.lstrip("/") if joined.startswith("//") else joined
    return expand_env(directory, env)


def login_shell(env: Mapping[str, str] | None = None) -> str:
    """The user's shell from passwd (7th field); $SHELL, then /bin/sh as fallbacks."""
    env = os.environ if env is None else env
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    return shell or env.get("SHELL", "") or "/bin/sh"


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", str(os.getuid()))
