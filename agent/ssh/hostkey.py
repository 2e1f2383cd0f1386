"""The agent's persistent SSH host key in its state directory, and its public half.

The key is made once (``ssh_host_ed25519_key``, mode 0600, directory 0700) by a
short-lived child process: OpenSSH's ``ssh-keygen`` when the workspace has it, else
:mod:`agent.ssh.keygen`; either way the agent's own memory does not grow by asyncssh and
cryptography just to have a key to publish. The public key is
read from ``ssh_host_ed25519_key.pub`` as plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from agent.errors import ProcessError

log = structlog.get_logger()

KEY_NAME: Final = "ssh_host_ed25519_key"
KEYGEN_TIMEOUT: Final = 60.0
COMMENT: Final = "wsagent host key"


class HostKeyFile:
    def __init__(
        self,
        state_dir: Path,
        register_group: Callable[[int, str], None] = lambda pgid, what: None,
        unregister_group: Callable[[int], None] = lambda pgid: None,
    ) -> None:
        self.path = state_dir / KEY_NAME
        self._register = register_group
        self._unregister = unregister_group
        self._lock = asyncio.Lock()

    def public_key(self) -> str:
        """The public key line, or "" when there is no key yet."""
        try:
            if not self.path.exists():
                return ""
            return self.path.with_name(KEY_NAME + ".pub").read_text().strip()
        except OSError:
            return ""

    async def ensure(self) -> str:
        """The public key line, generating the key first if there is none."""
        async with self._lock:
            existing = self.public_key()
            if existing:
                return existing
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            ssh_keygen = shutil.which("ssh-keygen")
            if ssh_keygen is not None:
                # OpenSSH's own tool takes milliseconds; the fallback imports asyncssh.
                with tempfile.TemporaryDirectory(dir=self.path.parent, prefix=".keygen-") as tmp:
                    fresh = Path(tmp) / KEY_NAME
                    argv = [ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", COMMENT]
                    await self._run([*argv, "-f", str(fresh)])
                    with contextlib.suppress(FileExistsError):
                        os.link(fresh, self.path)  # never replaces a key that exists
                        os.replace(fresh.with_name(KEY_NAME + ".pub"), self._public_path)
            else:
                await self._run([sys.executable, "-m", "agent.ssh.keygen", str(self.path)])
            public = self.public_key()
            if not public:
                raise ProcessError(f"ssh host key generation left no {self._public_path}")
            log.info("ssh.host_key_generated", path=str(self.path))
            return public

    @property
    def _public_path(self) -> Path:
        return self.path.with_name(KEY_NAME + ".pub")

    async def _run(self, argv: list[str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self._register(proc.pid, "ssh host key generation")
        try:
            _, err = await asyncio.wait_for(proc.communicate(), KEYGEN_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ProcessError(f"ssh host key generation took over {KEYGEN_TIMEOUT:g}s") from None
        finally:
            self._unregister(proc.pid)
        if proc.returncode != 0:
            why = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"]
            raise ProcessError(f"ssh host key generation failed: {why[0][:200]}")
