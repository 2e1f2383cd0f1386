"""The composition root: builds the agent's components and runs the connection loop.

Components never import each other; this module wires them together with callables.
Each attempt of the run loop (reference §5.2): exchange the token, fetch metadata, post
startup, start first-connection work once, then serve the coordinate socket until it fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from agent import __version__
from agent.backoff import Backoff
from agent.children import ChildRegistry
from agent.client import ControlPlaneClient, TokenHolder, tls_context
from agent.config import AUTH_TOKEN, AgentConfig
from agent.coordinator import Coordinator, CoordinatorSession
from agent.errors import ApiError, ConfigError, WsagentError
from agent.logs import REDACTOR, FailureThrottle, error_key
from agent.paths import expand_directory
from agent.sdk.extensions import Extension
from agent.sdk.models import Metadata, PostStartupRequest
from agent.sdk.tailnet import Node
from agent.stats import StatsCollector, StatsReporter

log = structlog.get_logger()

RUN_BACKOFF_FLOOR: Final = 0.1
RUN_BACKOFF_CEILING: Final = 10.0
# A connection that lived this long counts as healthy: the next failure starts the
# backoff from the floor again.
HEALTHY_CONNECTION_SECONDS: Final = 30.0

TokenExchange = Callable[[], Awaitable[str]]
MetadataHook = Callable[[Metadata, bool], Awaitable[None]]
ExtensionHook = Callable[[Extension, CoordinatorSession], Awaitable[None]]


def agent_version() -> str:
    return f"v{__version__}"


class Agent:
    def __init__(self, config: AgentConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.tokens = TokenHolder(config.token)
        if config.token:
            REDACTOR.add(config.token)
        self.client = ControlPlaneClient(
            config.url,
            self.tokens,
            verify=tls_context(
                insecure_skip_verify=config.insecure_skip_verify, ca_file=config.ca_file
            ),
        )
        self.children = ChildRegistry()
        self.stats = StatsCollector()
        self.metadata: Metadata | None = None
        self._rng = rng or random.Random()
        self._exchange: TokenExchange = self._static_token
        self._metadata_hooks: list[MetadataHook] = []
        self._extension_handlers: dict[type, ExtensionHook] = {}
        self._coordinator = Coordinator(self._on_extension)
        self._first_connection_done = False
        self._stats_task: asyncio.Task[None] | None = None
        self._throttle = FailureThrottle()

    # -------------------------------------------------------------- wiring

    def set_token_exchange(self, exchange: TokenExchange) -> None:
        self._exchange = exchange

    def add_metadata_hook(self, hook: MetadataHook) -> None:
        """``hook(metadata, first)`` runs after every successful startup post."""
        self._metadata_hooks.append(hook)

    def handle_extension(self, kind: type, handler: ExtensionHook) -> None:
        self._extension_handlers[kind] = handler

    async def _static_token(self) -> str:
        return self.config.token

    async def _on_extension(self, extension: Extension, session: CoordinatorSession) -> None:
        handler = self._extension_handlers.get(type(extension))
        if handler is None:
            log.warning("agent.extension_unsupported", type=type(extension).__name__)
            return
        await handler(extension, session)

    # -------------------------------------------------------------- run loop

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and reconnect until ``stop`` is set."""
        backoff = Backoff(RUN_BACKOFF_FLOOR, RUN_BACKOFF_CEILING, rng=self._rng)
        loop_task = asyncio.current_task()
        assert loop_task is not None
        while not stop.is_set():
            started = time.monotonic()
            attempt = asyncio.create_task(self._attempt())
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if attempt not in done:
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                break
            stopper.cancel()
            exc = attempt.exception()
            if isinstance(exc, ConfigError):
                raise exc  # e.g. CODER_AGENT_AUTH=auto found no cloud: retrying cannot help
            if exc is not None:
                self._log_failure(exc)
            if time.monotonic() - started >= HEALTHY_CONNECTION_SECONDS:
                backoff.reset()
            delay = backoff.next_delay()
            if _is_outdated_build(exc) and self.config.auth == AUTH_TOKEN:
                # Coder loops forever here (coder/coder#3485); a new token is needed, so
                # retry slowly and say so instead of hammering the server.
                delay = RUN_BACKOFF_CEILING * 6
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    def _log_failure(self, exc: BaseException) -> None:
        count = self._throttle.failure(error_key(exc), time.monotonic())
        if count is None:
            return
        event = "agent.run_failed"
        fields: dict[str, object] = {"error": str(exc), "error_type": type(exc).__name__}
        if count > 1:
            fields["repeats"] = count
        if _is_outdated_build(exc):
            fields["hint"] = (
                "this agent's build is outdated; restart the agent with the new build's token"
            )
            log.error(event, **fields)
        else:
            log.warning(event, **fields)

    async def _attempt(self) -> None:
        token = await self._exchange()
        if token != self.tokens.token:
            REDACTOR.add(token)
            self.tokens.token = token
        metadata = await self.client.metadata()
        expanded = expand_directory(metadata.directory)
        await self.client.post_startup(PostStartupRequest(agent_version(), expanded))
        self.metadata = metadata
        recovered = self._throttle.success()
        first = not self._first_connection_done
        self._first_connection_done = True
        log.info(
            "agent.startup_posted",
            version=agent_version(),
            expanded_directory=expanded,
            first=first,
            **({"recovered_after_failures": recovered} if recovered else {}),
        )
        for hook in self._metadata_hooks:
            await hook(metadata, first)
        if self._stats_task is None:
            reporter = StatsReporter(self.client.report_stats, self.stats, rng=self._rng)
            self._stats_task = asyncio.create_task(reporter.run())
        node = Node.new_agent_node(metadata.derpmap.first_region_id())
        await self._coordinator.serve(
            self.client.websocket_url("/workspaceagents/me/coordinate"),
            self.client.websocket_headers(),
            self.client.verify,
            node,
        )

    # -------------------------------------------------------------- shutdown

    async def shutdown(self) -> None:
        """Close politely, stop children (TERM, grace, KILL), release the client."""
        log.info("agent.shutting_down")
        try:
            await asyncio.wait_for(self._coordinator.aclose(), timeout=1.0)
        except (TimeoutError, OSError, WsagentError):
            pass
        if self._stats_task is not None:
            self._stats_task.cancel()
            await asyncio.gather(self._stats_task, return_exceptions=True)
        await self.children.terminate_all(self.config.shutdown_grace)
        await self.client.aclose()
        log.info("agent.stopped")


def _is_outdated_build(exc: BaseException | None) -> bool:
    return isinstance(exc, ApiError) and exc.status == 403 and "outdated" in exc.detail


async def run_until_signalled(agent: Agent) -> int:
    """Run the agent until SIGTERM/SIGINT/SIGHUP; a second signal exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            agent.children.kill_all_now()
            os._exit(128 + signum)
        log.info("agent.signal_received", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await agent.run(stop)
    finally:
        await agent.shutdown()
    return 0
