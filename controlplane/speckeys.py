"""The keys a workspace file (and ``wsagent admin``'s flags) may use, and the check that
turns a typo into an error naming the key and the nearest valid one.

A misspelt key must not be ignored: ``startup_script_timout = 60`` silently meaning "no
timeout" is worse than refusing the file. Pure.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Final

TOP_KEYS: Final = frozenset({"users", "gitauth", "workspaces"})
USER_KEYS: Final = frozenset({"name", "email"})
GITAUTH_KEYS: Final = frozenset({"id", "regex", "type", "credentials"})
CREDENTIAL_KEYS: Final = frozenset({"user", "token", "username", "password"})
WORKSPACE_KEYS: Final = frozenset({"owner", "name", "agents"})
AGENT_KEYS: Final = frozenset(
    {
        "name",
        "auth",
        "instance_id",
        "startup_script",
        "startup_script_timeout",
        "startup_script_timeout_seconds",
        "shutdown_script",
        "shutdown_script_timeout",
        "shutdown_script_timeout_seconds",
        "metadata",
        "directory",
        "env",
        "environment_variables",
        "motd_file",
        "apps",
        "connection_timeout",
        "connection_timeout_seconds",
        "troubleshooting_url",
        "login_before_ready",
    }
)
METADATA_KEYS: Final = frozenset({"key", "display_name", "script", "interval", "timeout"})
APP_KEYS: Final = frozenset(
    {
        "slug",
        "display_name",
        "url",
        "command",
        "icon",
        "external",
        "subdomain",
        "sharing_level",
        "healthcheck",
    }
)
HEALTHCHECK_KEYS: Final = frozenset({"url", "interval", "threshold"})


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to ``word``, if any is close enough to be a likely typo."""
    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_key_message(key: str, allowed: Iterable[str], where: str) -> str:
    prefix = f"{where}: " if where else ""
    hint = nearest(key, allowed)
    if hint is not None:
        return f"{prefix}unknown key {key!r} (did you mean {hint!r}?)"
    return f"{prefix}unknown key {key!r} (valid keys: {', '.join(sorted(allowed))})"


def first_unknown(raw: Mapping[str, object], allowed: frozenset[str]) -> str | None:
    for key in raw:
        if key not in allowed:
            return key
    return None
