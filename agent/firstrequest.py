"""The control plane's client and the agent's first request, sent before the rest of the
agent is imported.

Importing the agent's parts (the wire models of every endpoint, the components, the SSH
and terminal glue) takes longer than starting the interpreter. With token auth the first
request of the first connection attempt (``GET /me/metadata``) does not depend on any of
them, so ``wsagent agent`` sends it from here, imports the rest while it is in flight, and
the connection loop's first attempt takes its answer (or its error) as if it had made
the request itself. Every later attempt fetches anew.

This module imports only the client (httpx) and the configuration: not even the logs,
which are set up while the request is in flight (nothing logs before).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent.client import ControlPlaneClient, TokenHolder, tls_context
from agent.config import AUTH_TOKEN, AgentConfig

if TYPE_CHECKING:
    from agent.sdk.models import Metadata


class FirstRequest:
    """The client (with the token it sends) and, once :meth:`send` ran, the pending
    metadata request."""

    def __init__(self, config: AgentConfig) -> None:
        self.tokens = TokenHolder(config.token)
        self.client = ControlPlaneClient(
            config.url,
            self.tokens,
            verify=tls_context(
                insecure_skip_verify=config.insecure_skip_verify,
                ca_file=config.ca_file,
                url=config.url,
            ),
        )
        # Instance-identity auth exchanges a token first: nothing to send ahead.
        self._can_send = config.auth == AUTH_TOKEN
        self._pending: asyncio.Task[Metadata] | None = None
        self._sent = asyncio.Event()

    def send(self) -> None:
        """Start the metadata request (token auth only); needs the running loop."""
        if self._can_send and self._pending is None:
            self._pending = asyncio.create_task(
                self.client.metadata(on_sent=self._sent.set), name="agent.first_request"
            )

    async def sent(self) -> None:
        """Return once the request is on the wire, or has failed, or was never sent."""
        pending = self._pending
        if pending is None or pending.done():
            return
        written = asyncio.create_task(self._sent.wait())
        try:
            await asyncio.wait({pending, written}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            written.cancel()

    async def fetch_metadata(self) -> Metadata:
        """The connection loop's fetch: the request sent ahead the first time, then a
        new request each time."""
        pending, self._pending = self._pending, None
        if pending is not None:
            return await pending
        return await self.client.metadata()

    def discard(self) -> None:
        """At shutdown: drop a request sent ahead that no attempt took."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.done():
            if not pending.cancelled():
                pending.exception()  # retrieved: nobody will read it
        else:
            pending.cancel()
