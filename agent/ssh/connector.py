"""The ``ssh`` stream target: a new connection to the agent's SSH server.

This module is what the agent wires at start-up; it imports nothing heavy. The server
itself (agent/ssh/server.py: asyncssh, cryptography) is imported when the first SSH stream
arrives, and the host key is loaded then.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from agent.errors import StreamTargetError
from agent.sdk.extensions import StreamRequest
from agent.ssh.hostkey import HostKeyFile

if TYPE_CHECKING:
    from agent.ssh.server import SSHServerHost

log = structlog.get_logger()

SFTP_SERVERS: Final = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/ssh/sftp-server",
    "/usr/libexec/sftp-server",
)


def find_sftp_server() -> str | None:
    """OpenSSH's sftp-server, which serves the sftp subsystem (and modern scp)."""
    for path in SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("sftp-server")


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What sessions need from the rest of the agent, as callables (wired by the agent)."""

    environment: Callable[[], Mapping[str, str]]
    shell: Callable[[], str]
    directory: Callable[[], str]
    home: Callable[[], str]
    motd: Callable[[], str]
    register_group: Callable[[int, str], None]
    unregister_group: Callable[[int], None]
    sftp_server: str | None = None
    # The argv a session's child is started with (process-priority management wraps it).
    launch_argv: Callable[[Sequence[str]], list[str]] = list


class SSHConnector:
    def __init__(self, host_key: HostKeyFile, context: SessionContext) -> None:
        self._host_key = host_key
        self._context = context
        self._server: SSHServerHost | None = None
        self._lock = asyncio.Lock()

    async def _start(self) -> SSHServerHost:
        async with self._lock:
            if self._server is None:
                with warnings.catch_warnings():
                    # cryptography warns about DSA support that asyncssh merely references.
                    warnings.simplefilter("ignore")
                    from agent.ssh import server
                try:
                    # A small file read once; no thread (a thread would cost its own arena).
                    key = server.load_host_key(str(self._host_key.path))
                except (OSError, ValueError) as exc:
                    raise StreamTargetError(f"the SSH server has no host key: {exc}") from exc
                self._server = server.SSHServerHost(key, self._context)
                log.info("ssh.server_started")
            return self._server

    async def connect(
        self, request: StreamRequest
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        server = await self._start()
        return await server.open(request.client_addr)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
