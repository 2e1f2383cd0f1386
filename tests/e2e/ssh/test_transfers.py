"""File transfer through the control plane with the real OpenSSH tools: scp (SFTP mode,
the default, and the legacy protocol over exec), sftp, and rsync over ssh."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from pathlib import Path

import pytest

from tests.e2e.ssh.conftest import SSH, SSHWorld

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

MIB = 1 << 20


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


async def test_scp_both_directions(world: SSHWorld) -> None:
    scp = shutil.which("scp")
    assert scp is not None
    local = random_file(world.client_dir / "up.bin", 64 * MIB)
    code, _, err = await world.run(scp, "-q", *world.options(), str(local), "dev:up.bin")
    assert code == 0, err
    assert digest(world.home / "up.bin") == digest(local)
    down = world.client_dir / "down.bin"
    code, _, err = await world.run(scp, "-q", *world.options(), "dev:up.bin", str(down))
    assert code == 0, err
    assert digest(down) == digest(local)
    # The original protocol: scp runs `scp -t` / `scp -f` through exec.
    small = random_file(world.client_dir / "legacy.bin", 3 * MIB + 17)
    code, _, err = await world.run(scp, "-O", "-q", *world.options(), str(small), "dev:legacy.bin")
    assert code == 0, err
    back = world.client_dir / "legacy-back.bin"
    code, _, err = await world.run(scp, "-O", "-q", *world.options(), "dev:legacy.bin", str(back))
    assert code == 0, err
    assert digest(back) == digest(small) == digest(world.home / "legacy.bin")


async def test_sftp_both_directions(world: SSHWorld) -> None:
    sftp = shutil.which("sftp")
    assert sftp is not None
    local = random_file(world.client_dir / "put.bin", 64 * MIB)
    batch = world.client_dir / "batch"
    batch.write_text("put put.bin remote.bin\nget remote.bin got.bin\nls -l remote.bin\n")
    code, out, err = await world.run(sftp, "-q", *world.options(), "-b", str(batch), "dev")
    assert code == 0, err
    assert digest(world.home / "remote.bin") == digest(local)
    assert digest(world.client_dir / "got.bin") == digest(local)
    assert b"remote.bin" in out


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")
async def test_rsync_over_ssh(world: SSHWorld) -> None:
    rsync = shutil.which("rsync")
    assert rsync is not None and SSH is not None
    tree = world.client_dir / "tree"
    (tree / "sub").mkdir(parents=True)
    files = {
        "a.bin": os.urandom(5 * MIB),
        "sub/b.txt": b"hello\n" * 1000,
        "sub/c": b"",
    }
    for name, data in files.items():
        (tree / name).write_bytes(data)
    shell = shlex.join([SSH, *world.options()])
    code, _, err = await world.run(rsync, "-a", "-e", shell, f"{tree}/", "dev:tree/")
    assert code == 0, err
    for name, data in files.items():
        assert (world.home / "tree" / name).read_bytes() == data
    # A second run transfers nothing new and still succeeds (the delta protocol both ways).
    (tree / "sub" / "b.txt").write_bytes(b"changed\n")
    code, out, err = await world.run(rsync, "-ai", "-e", shell, f"{tree}/", "dev:tree/")
    assert code == 0, err
    assert b"sub/b.txt" in out and b"a.bin" not in out
    assert (world.home / "tree" / "sub" / "b.txt").read_bytes() == b"changed\n"
