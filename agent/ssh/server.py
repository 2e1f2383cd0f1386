"""The agent's SSH server (asyncssh), one connection per ``ssh`` byte stream.

Imported only when the first SSH stream arrives: asyncssh and cryptography cost several
MiB that an agent nobody SSHes into never pays (docs/benchmarks.md).

Authentication: none at the SSH layer. A stream reaches this server only after the control
plane authenticated the user's session token and checked that the user owns this
workspace, exactly as for terminals; the byte stream is the authenticated channel (the
same trust Coder's agent places in its tailnet). So every user name is accepted with the
``none`` method, and sessions run as the agent's own user whatever name the client sent.
The host key is still real and published, so the client knows it reached this agent.

Allowed: sessions (shell, exec, sftp), local forwarding (``direct-tcpip``), remote
forwarding (``tcpip-forward``) and agent forwarding. Not offered: X11, passwords, keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any, Final

import asyncssh
import structlog

from agent.ssh.connector import SessionContext
from agent.ssh.session import ShellSession
from agent.ssh.vars import connection_env

if TYPE_CHECKING:
    from asyncssh import SSHKey

log = structlog.get_logger()

MAX_SESSIONS_PER_CONNECTION: Final = 10  # OpenSSH's MaxSessions
LOGIN_TIMEOUT: Final = 30.0
KEEPALIVE_INTERVAL: Final = 30.0
SERVER_VERSION: Final = "wsagent"
SOCKET_BUFFER: Final = 256 * 1024
# Ciphers, in the server's order. The client's order decides, so what is left out matters:
# asyncssh's AES-GCM runs as one AEAD call per packet (AES-NI), about 1.75x the throughput
# of its ChaCha20-Poly1305 (two primitives and Python glue) and 1.35x AES-CTR + MAC;
# OpenSSH clients list chacha20 and the CTR modes first, so only the GCM modes are offered.
# Every OpenSSH since 6.2 (2013), PuTTY since 0.76, and Go's and Java's SSH clients have them.
CIPHERS: Final = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class WorkspaceServer(asyncssh.SSHServer):
    def __init__(self, context: SessionContext, conn_env: dict[str, str]) -> None:
        self._context = context
        self._conn_env = conn_env
        self._sessions = 0

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication needed: see the module docstring

    def session_requested(self) -> Any:
        if self._sessions >= MAX_SESSIONS_PER_CONNECTION:
            return False
        self._sessions += 1
        return ShellSession(self._context, self._conn_env)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        return True  # ssh -L: the workspace's user may reach what the workspace reaches

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return True  # ssh -R: listeners live as long as the connection


class SSHServerHost:
    """Starts one asyncssh server connection per stream, over a socket pair."""

    def __init__(self, host_key: SSHKey, context: SessionContext) -> None:
        self._host_key = host_key
        self._context = context
        self._connections: set[asyncio.Task[None]] = set()

    async def open(self, client_addr: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        env = connection_env(client_addr)
        task = asyncio.create_task(self._serve(theirs, env), name="ssh.connection")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        return await asyncio.open_connection(sock=ours, limit=256 * 1024)

    async def _serve(self, sock: socket.socket, env: dict[str, str]) -> None:
        try:
            conn = await asyncssh.run_server(
                sock,
                server_factory=lambda: WorkspaceServer(self._context, env),
                server_host_keys=[self._host_key],
                server_version=SERVER_VERSION,
                encoding=None,
                encryption_algs=CIPHERS,
                agent_forwarding=True,
                allow_pty=True,
                x11_forwarding=False,
                login_timeout=LOGIN_TIMEOUT,
                keepalive_interval=KEEPALIVE_INTERVAL,
            )
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.info("ssh.handshake_failed", error=str(exc)[:200])
            sock.close()
            return
        try:
            await conn.wait_closed()
        finally:
            conn.abort()

    def close(self) -> None:
        for task in list(self._connections):
            task.cancel()


def load_host_key(path: str) -> SSHKey:
    with contextlib.suppress(FileNotFoundError):
        return asyncssh.read_private_key(path)
    from agent.ssh.keygen import generate

    generate(path)
    return asyncssh.read_private_key(path)
