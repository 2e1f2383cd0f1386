"""VS Code machine settings that hand git credentials to ``wsagent`` (docs/protocol.md, "Git
helpers in the workspace").

VS Code and code-server set their own GIT_ASKPASS; these two settings make them leave
git alone so our askpass runs. The files are merged, never replaced: the user's other keys
stay, and a file that is not a JSON object is left untouched (and reported).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import structlog

from agent.sdk.errors import WsagentError

log = structlog.get_logger()

OVERRIDES: Final[dict[str, Any]] = {
    "git.useIntegratedAskPass": False,
    "github.gitAuthentication": False,
}
MAX_SETTINGS_BYTES: Final = 4 << 20


class SettingsError(WsagentError):
    """An existing settings file could not be read as a JSON object."""


def merge_settings(existing: bytes | None) -> bytes:
    """The settings file with our overrides merged in (tab-indented, as VS Code writes)."""
    settings: dict[str, Any] = {}
    if existing is not None and existing.strip():
        try:
            loaded = json.loads(existing)
        except ValueError as exc:
            raise SettingsError(f"not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError("not a JSON object")
        settings = loaded
    settings.update(OVERRIDES)
    return (json.dumps(settings, indent="\t") + "\n").encode()


def settings_paths(env: Mapping[str, str], home: str) -> list[Path]:
    data_home = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return [
        Path(data_home) / "code-server" / "Machine" / "settings.json",
        Path(home) / ".vscode-server" / "data" / "Machine" / "settings.json",
    ]


def write_settings(path: Path) -> None:
    """Merge the overrides into ``path`` atomically: file 0600, created dirs 0700."""
    try:
        with open(path, "rb") as f:
            existing: bytes | None = f.read(MAX_SETTINGS_BYTES)
    except FileNotFoundError:
        existing = None
    merged = merge_settings(existing)
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".settings-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(merged)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _make_dirs(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask


def apply_overrides(git_auth_configs: int, env: Mapping[str, str], home: str) -> None:
    """Write both settings files when git auth is configured; failures are only logged."""
    if git_auth_configs <= 0:
        return
    for path in settings_paths(env, home):
        try:
            write_settings(path)
        except (OSError, SettingsError) as exc:
            log.warning("vscode.settings_failed", path=str(path), error=str(exc))
        else:
            log.info("vscode.settings_written", path=str(path))
