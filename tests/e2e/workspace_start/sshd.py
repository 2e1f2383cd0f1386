"""A throw-away OpenSSH server on 127.0.0.1 for tests: its own host key, config and
authorized_keys in a temp dir, public-key auth only, for the current user."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_unavailable() -> str:
    """Why a real sshd cannot run here ("" if it can)."""
    if not Path(SSHD).exists():
        return "openssh-server is not installed (scripts/setup installs it)"
    if os.geteuid() != 0:
        return "sshd needs root for privilege separation in this set-up"
    return ""


def keygen(path: Path, comment: str = "test") -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
    )
    return (path.parent / (path.name + ".pub")).read_text()


def fingerprint(public_key: str, tmp: Path) -> str:
    pub = tmp / "fp.pub"
    pub.write_text(public_key)
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    root: Path
    port: int
    user: str
    proc: asyncio.subprocess.Process
    log: list[str] = field(default_factory=list)

    async def read_log(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    def authorize(self, *public_keys: str) -> None:
        self.authorized_keys.write_text("".join(k.strip() + "\n" for k in public_keys))

    def client_config(self, identity_file: Path | None = None) -> Path:
        """An ssh client config that trusts this server and uses only explicit keys."""
        lines = [
            "Host *",
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  GlobalKnownHostsFile /dev/null",
            "  IdentitiesOnly yes",
            "  BatchMode yes",
            "  LogLevel ERROR",
        ]
        if identity_file is not None:
            lines.append(f"  IdentityFile {identity_file}")
        path = self.root / f"client{len(list(self.root.glob('client*')))}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path


@contextlib.asynccontextmanager
async def run_sshd(root: Path) -> AsyncIterator[Sshd]:
    root.mkdir(parents=True, exist_ok=True)
    keygen(root / "host_ed25519", "host")
    (root / "authorized_keys").write_text("")
    # sshd refuses to start without its privilege-separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    user = getpass.getuser()
    for _attempt in range(5):
        port = _free_port()
        config = root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {root / 'host_ed25519'}",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    "PidFile none",
                    "UsePAM no",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {user}",
                    "LogLevel VERBOSE",
                    # scp's default (SFTP) protocol, for bench/ssh_throughput.py's baseline.
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        proc = await asyncio.create_subprocess_exec(
            SSHD, "-D", "-e", "-f", str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        sshd = Sshd(root, port, user, proc)
        assert proc.stderr is not None
        ready = False
        async with asyncio.timeout(10):
            while line := await proc.stderr.readline():
                sshd.log.append(line.decode(errors="replace").rstrip())
                if b"Server listening" in line:
                    ready = True
                    break
        if not ready:
            await proc.wait()
            continue  # the port was taken meanwhile: try another

        reader = asyncio.create_task(sshd.read_log())
        try:
            yield sshd
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
            await asyncio.gather(reader, return_exceptions=True)
        return
    raise AssertionError("sshd did not start:\n" + "\n".join(sshd.log))
