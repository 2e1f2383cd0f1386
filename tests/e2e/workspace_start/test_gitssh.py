"""``wsagent gitssh`` with the real ssh client against a real sshd on 127.0.0.1 that
accepts only the keys a test authorizes (docs/protocol.md, "Git helpers in the workspace")."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.sessionenv import wsagent_executable
from tests.conftest import ControlPlane, poll_until
from tests.e2e.workspace_start.githttp import make_repo
from tests.e2e.workspace_start.sshd import Sshd, fingerprint, keygen, run_sshd, sshd_unavailable

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(sshd_unavailable()), reason=sshd_unavailable()),
]


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[Sshd]:
    async with run_sshd(tmp_path / "sshd") as server:
        yield server


async def _owner_key(cp: ControlPlane, user: str) -> tuple[str, str]:
    """(agent token, the owner's git SSH public key from the control plane)."""
    record, _ = await cp.create_user(user)
    agents = await cp.create_workspace(user, "dev")
    key = await cp.store.git_ssh_key(record.id)
    assert key is not None
    return agents["main"][1], key.public_key


def _env(cp: ControlPlane, token: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "keys").mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "keys"),  # where the temp key goes, so we can see it removed
        "CODER_AGENT_URL": cp.url,
        "CODER_AGENT_TOKEN": token,
    }


async def _gitssh(env: dict[str, str], *ssh_args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        wsagent_executable(),
        "gitssh",
        "--",
        *ssh_args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _target(sshd: Sshd) -> list[str]:
    return ["-p", str(sshd.port), f"{sshd.user}@127.0.0.1"]


async def test_gitssh_authenticates_with_the_control_plane_key(
    control_plane: ControlPlane, sshd: Sshd, tmp_path: Path
) -> None:
    """sshd accepts only the owner's key from /me/gitsshkey; the temp key is removed."""
    token, public_key = await _owner_key(control_plane, "mia")
    sshd.authorize(public_key)
    env = _env(control_plane, token, tmp_path)
    cfg = sshd.client_config()
    code, out, err = await _gitssh(env, "-F", str(cfg), *_target(sshd), "echo hello-over-ssh")
    assert (code, out) == (0, "hello-over-ssh\n"), err
    assert list((tmp_path / "keys").iterdir()) == []
    code, _, _ = await _gitssh(env, "-F", str(cfg), *_target(sshd), "exit 7")
    assert code == 7  # ssh's exit code passes through
    assert list((tmp_path / "keys").iterdir()) == []


async def test_gitssh_rejected_prints_public_key(
    control_plane: ControlPlane, sshd: Sshd, tmp_path: Path
) -> None:
    token, public_key = await _owner_key(control_plane, "ned")
    sshd.authorize(keygen(tmp_path / "someone_else"))
    env = _env(control_plane, token, tmp_path)
    code, _, err = await _gitssh(env, "-F", str(sshd.client_config()), *_target(sshd), "true")
    assert code == 255
    assert public_key.strip() in err
    assert "add this" in err and "github.com/settings/ssh" in err
    assert list((tmp_path / "keys").iterdir()) == []


async def test_gitssh_tries_the_users_own_key_first(
    control_plane: ControlPlane, sshd: Sshd, tmp_path: Path
) -> None:
    """With both keys authorized, the user's configured IdentityFile is the one accepted."""
    token, public_key = await _owner_key(control_plane, "ola")
    user_key = tmp_path / "home" / "id_work"
    (tmp_path / "home").mkdir()
    user_public = keygen(user_key, "user")
    sshd.authorize(public_key, user_public)
    env = _env(control_plane, token, tmp_path)
    cfg = sshd.client_config(identity_file=user_key)
    code, out, err = await _gitssh(env, "-F", str(cfg), *_target(sshd), "echo ok")
    assert (code, out) == (0, "ok\n"), err
    user_fp = fingerprint(user_public, tmp_path)
    accepted = await poll_until(
        lambda: [line for line in sshd.log if "Accepted publickey" in line], timeout=10
    )
    assert user_fp in accepted[-1], accepted
    assert fingerprint(public_key, tmp_path) not in accepted[-1]


async def test_git_clone_over_ssh_with_gitssh(
    control_plane: ControlPlane, sshd: Sshd, tmp_path: Path
) -> None:
    """git itself runs GIT_SSH_COMMAND=<wsagent> gitssh -- ... as a session would."""
    token, public_key = await _owner_key(control_plane, "pia")
    sshd.authorize(public_key)
    bare = make_repo(tmp_path / "srv")
    env = _env(control_plane, token, tmp_path)
    env["GIT_SSH_COMMAND"] = f"{wsagent_executable()} gitssh -- -F {sshd.client_config()}"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(
        "git", "clone", "-q", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{bare}", str(out),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "out" / "README").read_text() == "hello from the test repo\n"
    assert list((tmp_path / "keys").iterdir()) == []
    assert any(
        re.search(r"Accepted publickey for \S+ from 127\.0\.0\.1", line) for line in sshd.log
    )


async def test_gitssh_removes_key_when_terminated(
    control_plane: ControlPlane, sshd: Sshd, tmp_path: Path
) -> None:
    """SIGTERM mid-session: ssh is stopped and the temp key still removed."""
    token, public_key = await _owner_key(control_plane, "quin")
    sshd.authorize(public_key)
    env = _env(control_plane, token, tmp_path)
    proc = await asyncio.create_subprocess_exec(
        wsagent_executable(), "gitssh", "--", "-F", str(sshd.client_config()), *_target(sshd),
        "sleep 30",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    await poll_until(lambda: any("Accepted publickey" in line for line in sshd.log), timeout=15)
    assert len(list((tmp_path / "keys").iterdir())) == 1
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode != 0
    assert list((tmp_path / "keys").iterdir()) == []
