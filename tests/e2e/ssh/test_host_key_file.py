"""The persistent host key: made once (by ssh-keygen, or by the asyncssh child when the
workspace has no OpenSSH), private key 0600 in a 0700 directory, the same key ever after."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.sdk.hostkeys import normalize_public_key
from agent.ssh.hostkey import HostKeyFile

pytestmark = pytest.mark.e2e  # it runs ssh-keygen or a Python child


@pytest.mark.parametrize("with_ssh_keygen", [True, False])
async def test_key_is_made_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_ssh_keygen: bool
) -> None:
    if not with_ssh_keygen:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    state = tmp_path / "state"
    groups: list[int] = []
    keys = HostKeyFile(state, lambda pgid, what: groups.append(pgid), lambda pgid: None)
    assert keys.public_key() == ""
    first = await keys.ensure()
    assert normalize_public_key(first).startswith("ssh-ed25519 ")
    assert groups  # the child went through the child registry
    private = state / "ssh_host_ed25519_key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert [p.name for p in state.iterdir() if p.name.startswith(".")] == []
    again = HostKeyFile(state)
    assert await again.ensure() == first
    assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
