"""``wsagent terminal``'s memory of the sessions it opened, for ``--reconnect last``.

One small JSON file, ``$XDG_STATE_HOME/wsagent/terminal-sessions.json`` (by default
``~/.local/state/wsagent/``), mode 0600, maps each control plane URL and agent to the id
of the last session opened there. A session id alone opens nothing (the user's token is
needed too), but it is the user's own business, hence 0600. At most ``MAX_ENTRIES``
agents are remembered; the oldest is forgotten first.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

MAX_ENTRIES: Final = 64
FILE_NAME: Final = "terminal-sessions.json"


def state_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "wsagent" / FILE_NAME


def _key(url: str, agent_id: str) -> str:
    return f"{url.rstrip('/')} {agent_id}"


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def last_session(path: Path, url: str, agent_id: str) -> str | None:
    return _load(path).get(_key(url, agent_id))


def remember(path: Path, url: str, agent_id: str, session_id: str) -> None:
    """Record ``session_id`` as the last one for this agent. Best effort: a read-only home
    only costs ``--reconnect last``."""
    entries = _load(path)
    entries.pop(_key(url, agent_id), None)
    entries[_key(url, agent_id)] = session_id  # newest last
    while len(entries) > MAX_ENTRIES:
        del entries[next(iter(entries))]
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".terminal-sessions.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
