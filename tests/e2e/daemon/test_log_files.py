"""The daemon's log files in a directory other users can write to: a planted link or
someone else's file under a log's name is refused and left alone, and a log directory the
agent creates is 0700 whatever the umask."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from tests.e2e.daemon.conftest import SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e

VICTIM_TEXT = "precious contents\n"


def _sticky_dir(tmp_path: Path) -> Path:
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create names in it
    return shared


def _victim(tmp_path: Path, name: str) -> Path:
    victim = tmp_path / name
    victim.write_text(VICTIM_TEXT)
    victim.chmod(0o644)
    return victim


def _untouched(victim: Path) -> None:
    assert victim.read_text() == VICTIM_TEXT
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


async def test_planted_symlinks_are_refused_and_their_targets_left_alone(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str, tmp_path: Path
) -> None:
    """Symbolic links named coder-agent.log and coder-startup-script.log in a sticky temp
    directory: the agent neither truncates nor chmods their targets, says why, and still
    runs the startup script."""
    shared = _sticky_dir(tmp_path)
    agent_victim = _victim(tmp_path, "victim-agent")
    script_victim = _victim(tmp_path, "victim-script")
    (shared / "coder-agent.log").symlink_to(agent_victim)
    (shared / "coder-startup-script.log").symlink_to(script_victim)
    fake_cp.startup_script = "echo the script ran"

    daemon = await spawn_daemon(fake_cp.url, agent_token, CODER_AGENT_LOG_DIR=str(shared))
    await daemon.wait_for_event("startup.script_exited")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(10.0) == 0

    _untouched(agent_victim)
    _untouched(script_victim)
    assert (shared / "coder-agent.log").is_symlink()
    assert (shared / "coder-startup-script.log").is_symlink()
    (refused,) = daemon.named("logs.file_refused")
    assert "symbolic link" in refused["error"]
    assert str(shared / "coder-agent.log") in refused["error"]
    (script_refused,) = daemon.named("startup.log_refused")
    assert script_refused["path"] == str(shared / "coder-startup-script.log")
    assert daemon.named("startup.script_exited")[0]["exit_code"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file owned by another user")
async def test_other_users_file_and_hard_link_are_refused(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str, tmp_path: Path
) -> None:
    """A regular file owned by another user, and a hard link to one of the agent user's
    own files, are not written through either."""
    shared = _sticky_dir(tmp_path)
    foreign = shared / "coder-agent.log"
    foreign.write_text(VICTIM_TEXT)
    foreign.chmod(0o644)
    os.chown(foreign, 65534, 65534)
    script_victim = _victim(tmp_path, "victim-script")
    os.link(script_victim, shared / "coder-startup-script.log")
    fake_cp.startup_script = "echo the script ran"

    daemon = await spawn_daemon(fake_cp.url, agent_token, CODER_AGENT_LOG_DIR=str(shared))
    await daemon.wait_for_event("startup.script_exited")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(10.0) == 0

    _untouched(foreign)
    assert foreign.stat().st_uid == 65534
    _untouched(script_victim)
    assert "owned by uid 65534" in daemon.named("logs.file_refused")[0]["error"]
    assert "hard links" in daemon.named("startup.log_refused")[0]["error"]


async def test_log_directory_is_created_0700_under_umask_000(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str, tmp_path: Path
) -> None:
    """With umask 000 the agent's new log directory (and its new parent) is 0700 and its
    log files 0600."""
    log_dir = tmp_path / "new-parent" / "logs"
    fake_cp.startup_script = "echo the script ran"
    daemon = await spawn_daemon(
        fake_cp.url,
        agent_token,
        prefix=("/bin/sh", "-c", 'umask 000; exec "$@"', "umask-000"),
        CODER_AGENT_LOG_DIR=str(log_dir),
    )
    await daemon.wait_for_event("startup.script_exited")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(10.0) == 0

    for directory in (log_dir, log_dir.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for name in ("coder-agent.log", "coder-startup-script.log"):
        assert stat.S_IMODE((log_dir / name).stat().st_mode) == 0o600, name
