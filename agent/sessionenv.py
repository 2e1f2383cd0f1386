"""The environment and working directory of every user process the agent starts: the startup
script and terminals (docs/protocol.md, "Session environment"). Pure apart from reading
passwd and the filesystem for the working directory.

Order matters, later entries win: the agent's own environment, then ``CODER``, ``USER``,
``GIT_SSH_COMMAND``, ``CODER_AGENT_TOKEN``, ``VSCODE_PROXY_URI``, then the template's
``environment_variables`` (``$VAR`` expanded against the agent's environment), and last
``GIT_ASKPASS`` so a template cannot break git credentials by accident.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from agent.paths import current_user, expand_directory, expand_env, home_directory
from agent.sdk.models import Metadata

EXECUTABLE_NAME = "wsagent"


def wsagent_executable(
    argv0: str | None = None, python: str | None = None, path: str | None = None
) -> str:
    """The path of the ``wsagent`` console script, for GIT_ASKPASS and GIT_SSH_COMMAND.

    ``sys.argv[0]`` when the agent was started through the script; otherwise (``python -m
    wsagent``) the script installed beside the running interpreter, so git calls back into
    the same installation; otherwise whatever ``wsagent`` is on PATH.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    python = sys.executable if python is None else python
    if argv0 and os.path.basename(argv0) == EXECUTABLE_NAME:
        candidate = shutil.which(argv0) if os.sep not in argv0 else argv0
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    if python:
        sibling = os.path.join(os.path.dirname(python), EXECUTABLE_NAME)
        if os.access(sibling, os.X_OK):
            return os.path.abspath(sibling)
    found = shutil.which(EXECUTABLE_NAME, path=path)
    return os.path.abspath(found) if found else EXECUTABLE_NAME


def session_environment(
    metadata: Metadata,
    token: str,
    executable: str,
    *,
    base: Mapping[str, str] | None = None,
    user: str | None = None,
) -> dict[str, str]:
    """The environment for a user process. ``base`` defaults to the agent's environment;
    ``token`` is the agent's *current* token (it changes with identity auth)."""
    base = os.environ if base is None else base
    env = dict(base)
    # Like Coder, put the agent's own directory on PATH so ``wsagent`` is callable from
    # sessions; appended, so it never shadows the user's tools.
    exe_dir = os.path.dirname(executable)
    if exe_dir:
        parts = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
        if exe_dir not in parts:
            env["PATH"] = os.pathsep.join([*parts, exe_dir])
    env["CODER"] = "true"
    env["USER"] = user if user is not None else current_user()
    # git runs GIT_SSH_COMMAND through a shell, so the path is quoted.
    env["GIT_SSH_COMMAND"] = f"{shlex.quote(executable)} gitssh --"
    env["CODER_AGENT_TOKEN"] = token
    env["VSCODE_PROXY_URI"] = metadata.vscode_port_proxy_uri
    env["CS_DISABLE_GETTING_STARTED_OVERRIDE"] = "true"
    for key, value in metadata.environment_variables.items():
        env[key] = expand_env(value, base)
    env["GIT_ASKPASS"] = executable
    return env


def working_directory(metadata: Metadata, env: Mapping[str, str] | None = None) -> str:
    """The expanded ``directory`` when it is an existing directory, else the home directory."""
    env = os.environ if env is None else env
    expanded = expand_directory(metadata.directory, env)
    if expanded and Path(expanded).is_dir():
        return expanded
    home = home_directory(env)
    # A process cannot start in a missing directory; "/" always exists.
    return home if Path(home).is_dir() else "/"
