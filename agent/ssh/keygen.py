"""Generate the agent's SSH host key: ed25519, private key mode 0600, written once.

Run as ``python -m agent.ssh.keygen PATH`` by the agent on its first connection when the
workspace has no ``ssh-keygen`` (a short-lived child, so the agent itself does not load
asyncssh and cryptography until someone connects), and called in-process if the first SSH
connection finds no key. Two writers racing lose
nothing: the key is written to a private temporary file and linked into place only if no
key exists yet; the loser keeps the winner's key.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from typing import Final

PUBLIC_SUFFIX: Final = ".pub"
COMMENT: Final = "wsagent host key"


def _write_once(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` unless it exists (then leave it alone)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hostkey-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def generate(path: str) -> str:
    """Make sure a host key exists at ``path``; return its public key line."""
    with warnings.catch_warnings():
        # cryptography warns about DSA support that asyncssh merely references.
        warnings.simplefilter("ignore")
        import asyncssh
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    if not os.path.exists(path):
        key = asyncssh.generate_private_key("ssh-ed25519", comment=COMMENT)
        _write_once(path, key.export_private_key("openssh"), 0o600)
    key = asyncssh.read_private_key(path)
    public = key.export_public_key("openssh").decode().strip()
    pub_path = path + PUBLIC_SUFFIX
    try:
        with open(pub_path) as f:
            current = f.read().strip()
    except FileNotFoundError:
        current = ""
    if current.split()[:2] != public.split()[:2]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pub_path)
        _write_once(pub_path, (public + "\n").encode(), 0o644)
    return public


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m agent.ssh.keygen PATH", file=sys.stderr)
        return 2
    print(generate(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
