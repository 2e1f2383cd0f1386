"""Where the user commands get the control plane URL and the user's token.

Each of the two is taken from the first place that has it: the ``--url``/``--token``
flags, Coder's CLI variables ``CODER_URL``/``CODER_SESSION_TOKEN``, then the session file
that ``wsagent login`` writes (``$WSAGENT_CONFIG_DIR/session``, by default
``~/.config/wsagent/session``; JSON, mode 0600 in a 0700 directory). A session file that
others may read is refused, as ssh refuses such a private key.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from agent.sdk.errors import WsagentError

SESSION_FILE: Final = "session"
MAX_SESSION_BYTES: Final = 64 * 1024


class CliError(WsagentError):
    """A user command failed; the message is the one line it prints."""


@dataclass(frozen=True, slots=True)
class Credentials:
    url: str
    token: str


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    explicit = env.get("WSAGENT_CONFIG_DIR", "")
    if explicit:
        return Path(explicit)
    base = env.get("XDG_CONFIG_HOME", "") or os.path.join(env.get("HOME", "") or "~", ".config")
    return Path(os.path.expanduser(base)) / "wsagent"


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"the control plane URL must be http(s)://host[:port], got {url!r}")
    return url.rstrip("/")


def load_session(path: Path) -> dict[str, str]:
    """The session file's fields; {} when there is none. Refuses a file others can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read the session file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CliError(
                f"the session file {path} is accessible by others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        data = f.read(MAX_SESSION_BYTES + 1)
    try:
        value = json.loads(data) if len(data) <= MAX_SESSION_BYTES else None
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CliError(f"the session file {path} is damaged; run wsagent login again")
    return {k: v for k, v in value.items() if k in ("url", "token")}


def save_session(path: Path, credentials: Credentials) -> None:
    """Write the session file atomically with mode 0600 (its directory 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    body = json.dumps({"url": credentials.url, "token": credentials.token}).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".session-")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def resolve(
    url: str | None, token: str | None, env: Mapping[str, str] | None = None
) -> Credentials:
    """The URL and token to use (see the module docstring), or one clear error."""
    env = os.environ if env is None else env
    url = url or env.get("CODER_URL", "")
    token = token or env.get("CODER_SESSION_TOKEN", "")
    if not url or not token:
        saved = load_session(config_dir(env) / SESSION_FILE)
        url = url or saved.get("url", "")
        token = token or saved.get("token", "")
    if not url:
        raise CliError("no control plane URL: pass --url, set CODER_URL, or run wsagent login")
    if not token:
        raise CliError("not logged in: pass --token, set CODER_SESSION_TOKEN, or run wsagent login")
    return Credentials(check_url(url), token)
