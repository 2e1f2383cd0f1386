"""The SSH part of the composition root: the server behind ``ssh`` streams and its host key.

Kept beside agent/compose.py (which builds it) so the root stays readable; like it, this
module may know every component. Nothing heavy is imported here: asyncssh comes with the
first SSH stream (agent/ssh/connector.py), and the host key is made by a short-lived child
process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from agent import paths, sessionenv
from agent.children import ChildRegistry
from agent.client import ControlPlaneClient, TokenHolder
from agent.errors import WsagentError
from agent.sdk.hostkeys import SSHHostKey, normalize_public_key
from agent.sdk.models import Metadata
from agent.ssh.hostkey import HostKeyFile
from agent.supervisor import Supervisor

if TYPE_CHECKING:
    from agent.sdk.extensions import StreamRequest
    from agent.ssh.connector import SSHConnector

log = structlog.get_logger()

HOST_KEY_RETRY: Final = 5.0


class SSHAccess:
    """The SSH server behind ``ssh`` streams, and the report of its host key.

    On the first connection a supervised task makes sure the persistent host key exists
    and posts its public half; every later connection posts it again, so a restarted or
    replaced control plane learns it."""

    def __init__(
        self,
        client: ControlPlaneClient,
        tokens: TokenHolder,
        children: ChildRegistry,
        supervisor: Supervisor,
        state_dir: Path,
        executable: str,
    ) -> None:
        self._client = client
        self._tokens = tokens
        self._supervisor = supervisor
        self._executable = executable
        self.metadata: Metadata | None = None  # the latest, for each new session
        self._children = children
        self.host_key = HostKeyFile(state_dir, children.add, children.discard)
        # The SSH server's glue (agent.ssh.connector) is imported on the first SSH stream.
        self.connector: SSHConnector | None = None
        self._wanted = asyncio.Event()

    async def connect(
        self, request: StreamRequest
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The stream target for ``ssh`` streams."""
        if self.connector is None:
            from agent.ssh.connector import SessionContext, SSHConnector, find_sftp_server

            children = self._children
            context = SessionContext(
                environment=self._environment,
                shell=paths.login_shell,
                directory=self._directory,
                home=paths.home_directory,
                motd=self._motd,
                register_group=children.add,
                unregister_group=children.discard,
                sftp_server=find_sftp_server(),
                launch_argv=children.launch_argv,
            )
            self.connector = SSHConnector(self.host_key, context)
        return await self.connector.connect(request)

    def _environment(self) -> Mapping[str, str]:
        md = self.metadata
        if md is None:
            return os.environ
        return sessionenv.session_environment(md, self._tokens.token, self._executable)

    def _motd(self) -> str:
        from agent import motd

        md = self.metadata
        return motd.read_motd(md.motd_file, paths.home_directory()) if md else ""

    def _directory(self) -> str:
        md = self.metadata
        return sessionenv.working_directory(md) if md else ""

    async def on_metadata(self, metadata: Metadata, first: bool) -> None:
        self.metadata = metadata
        self._wanted.set()
        if first:
            self._supervisor.start("ssh_host_key", self._report)

    async def _report(self) -> None:
        public = normalize_public_key(await self.host_key.ensure())
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self._client.post_ssh_host_key(SSHHostKey(public))
            except WsagentError as exc:
                log.warning("ssh.host_key_report_failed", error=str(exc))
                await asyncio.sleep(HOST_KEY_RETRY)
                self._wanted.set()

    def close(self) -> None:
        if self.connector is not None:
            self.connector.close()
