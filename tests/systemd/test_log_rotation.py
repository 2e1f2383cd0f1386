"""The agent's own log file has a size cap and a count cap, both set from the environment
(what a unit's EnvironmentFile or a container's -e gives it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from wscommon.logs import RotatingFile

BASE = {"CODER_AGENT_URL": "http://127.0.0.1:1", "CODER_AGENT_TOKEN": "t"}


def test_backups_and_size_come_from_the_environment(tmp_path: Path) -> None:
    env = {**BASE, "CODER_AGENT_LOG_DIR": str(tmp_path)}
    default = load_config([], env)
    assert default.log_backups == 1
    config = load_config(
        [], {**env, "CODER_AGENT_LOG_BACKUPS": "3", "CODER_AGENT_LOG_MAX_SIZE": "8KiB"}
    )
    assert (config.log_backups, config.log_max_bytes) == (3, 8192)


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_bad_backups_name_the_setting(tmp_path: Path, bad: str) -> None:
    env = {**BASE, "CODER_AGENT_LOG_DIR": str(tmp_path), "CODER_AGENT_LOG_BACKUPS": bad}
    with pytest.raises(ConfigError, match="CODER_AGENT_LOG_BACKUPS"):
        load_config([], env)


def test_rotation_keeps_at_most_backups_files_each_under_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "coder-agent.log"
    log = RotatingFile(path, max_bytes=4096, backups=3)
    try:
        for i in range(200):
            log.write(f"line {i:04d} " + "x" * 200 + "\n")
    finally:
        log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "coder-agent.log",
        "coder-agent.log.1",
        "coder-agent.log.2",
        "coder-agent.log.3",
    ]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    # The newest line is in the live file, and the backups are the ones just before it.
    assert "line 0199" in path.read_text()
    assert "line 0000" not in (tmp_path / "coder-agent.log.3").read_text()
