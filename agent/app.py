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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import structlog

from agent.backoff import Backoff
from agent.children import ChildRegistry
from agent.client import ControlPlaneClient, TokenHolder, tls_context
from agent.config import AUTH_TOKEN, AgentConfig
from agent.coordinator import Coordinator, CoordinatorSession
from agent.errors import ApiError, ConfigError, WsagentError
from agent.logs import FailureThrottle, error_key
from agent.paths import expand_directory
from agent.sdk.extensions import Extension
from agent.sdk.models import Metadata, PostStartupRequest
from agent.sdk.tailnet import Node
from agent.stats import StatsCollector, StatsReporter
from wscommon import __version__
from wscommon.logs import REDACTOR, close_stream

log = structlog.get_logger()

RUN_BACKOFF_FLOOR: Final = 0.1
RUN_BACKOFF_CEILING: Final = 10.0
# A connection that lived this long counts as healthy: the next failure starts the
# backoff from the floor again, and its failures are news again in the log.
HEALTHY_CONNECTION_SECONDS: Final = 30.0
# Shutdown must finish within 5 s of the signal (issue 2); these split that budget.
SHUTDOWN_BUDGET: Final = 4.5
ATTEMPT_STOP_TIMEOUT: Final = 1.5
TASK_STOP_TIMEOUT: Final = 0.5
# A background task that crashes is restarted after this long (and logged, throttled).
TASK_RESTART_DELAY: Final = 5.0

# Connection states, as the metrics endpoint labels them.
STATE_CONNECTING: Final = "connecting"
STATE_CONNECTED: Final = "connected"
STATE_BACKOFF: Final = "backoff"
CONNECTION_STATES: Final = (STATE_CONNECTING, STATE_CONNECTED, STATE_BACKOFF)

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
                insecure_skip_verify=config.insecure_skip_verify,
                ca_file=config.ca_file,
                url=config.url,
            ),
        )
        self.children = ChildRegistry()
        self.stats = StatsCollector()
        self.metadata: Metadata | None = None
        self._rng = rng or random.Random()
        self._exchange: TokenExchange = self._static_token
        self._metadata_hooks: list[MetadataHook] = []
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._extension_handlers: dict[type, ExtensionHook] = {}
        self._coordinator = Coordinator(self._on_extension)
        self._first_connection_done = False
        self._stats_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.task_restart_delay = TASK_RESTART_DELAY
        self._throttle = FailureThrottle()
        self._hook_throttle = FailureThrottle()
        # Connection bookkeeping for the log: see _on_connected.
        self._connected_at: float | None = None
        self._failed_attempts = 0
        self._last_attempt_flapped = False
        # Read-only counters for the metrics endpoint and status lines (agent/metrics.py).
        self.connection_state = STATE_CONNECTING
        self.attempts_total = 0
        self.connections_total = 0
        self.token_exchanges_total = 0
        self.token_exchange_failures_total = 0
        self._exchanges_tokens = False

    # -------------------------------------------------------------- wiring

    def set_token_exchange(self, exchange: TokenExchange) -> None:
        self._exchange = exchange
        self._exchanges_tokens = True

    def add_metadata_hook(self, hook: MetadataHook) -> None:
        """``hook(metadata, first)`` runs after every successful startup post."""
        self._metadata_hooks.append(hook)

    def add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        """``hook()`` runs at the start of shutdown, before children are stopped."""
        self._shutdown_hooks.append(hook)

    def handle_extension(self, kind: type, handler: ExtensionHook) -> None:
        self._extension_handlers[kind] = handler

    def start_task(
        self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        """Run ``factory()`` in the background until shutdown, restarting it if it crashes.

        Cancel the returned task to stop it early; shutdown cancels whatever is left.
        """
        task = asyncio.create_task(self._supervise(name, factory), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        throttle = FailureThrottle()
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a component's bug must not take the agent down
                if throttle.failure(error_key(exc), time.monotonic()) is not None:
                    log.error("agent.task_crashed", task=name, error=str(exc), exc_info=exc)
            await asyncio.sleep(self.task_restart_delay)

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
        ceiling = self.config.reconnect_max_delay
        backoff = Backoff(min(RUN_BACKOFF_FLOOR, ceiling), ceiling, rng=self._rng)
        while not stop.is_set():
            self._connected_at = None
            self.connection_state = STATE_CONNECTING
            self.attempts_total += 1
            attempt = asyncio.create_task(self._attempt(), name="agent.attempt")
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if attempt not in done:
                await _cancel(attempt, ATTEMPT_STOP_TIMEOUT)
                break
            stopper.cancel()
            self.connection_state = STATE_BACKOFF
            exc = None if attempt.cancelled() else attempt.exception()
            if isinstance(exc, ConfigError):
                raise exc  # e.g. CODER_AGENT_AUTH=auto found no cloud: retrying cannot help
            connected_for = (
                None if self._connected_at is None else time.monotonic() - self._connected_at
            )
            healthy = connected_for is not None and connected_for >= HEALTHY_CONNECTION_SECONDS
            if healthy:
                backoff.reset()
                self._throttle.success()
            # Connected, then dropped at once: the next "connected" is not news.
            self._last_attempt_flapped = connected_for is not None and not healthy
            if connected_for is None:
                self._failed_attempts += 1
            self._log_failure(exc if exc is not None else RuntimeError("attempt ended"))
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
        if not isinstance(exc, WsagentError):
            fields["exc_info"] = exc  # not an expected failure: keep the traceback
        if _is_outdated_build(exc):
            fields["hint"] = (
                "this agent's build is outdated; restart the agent with the new build's token"
            )
            log.error(event, **fields)
        else:
            log.warning(event, **fields)

    def _on_connected(self, expanded: str, first: bool) -> None:
        """One info line per real (re)connection; a socket that flaps logs at debug."""
        self._connected_at = time.monotonic()
        self.connection_state = STATE_CONNECTED
        self.connections_total += 1
        fields: dict[str, object] = {
            "version": agent_version(),
            "expanded_directory": expanded,
            "first": first,
        }
        if self._failed_attempts:
            fields["recovered_after_failures"] = self._failed_attempts
        self._failed_attempts = 0
        if first or not self._last_attempt_flapped:
            log.info("agent.connected", **fields)
        else:
            log.debug("agent.connected", **fields)

    async def _attempt(self) -> None:
        try:
            token = await self._exchange()
        except Exception:
            self.token_exchange_failures_total += self._exchanges_tokens
            raise
        self.token_exchanges_total += self._exchanges_tokens
        if token != self.tokens.token:
            REDACTOR.add(token)
            self.tokens.token = token
        metadata = await self.client.metadata()
        expanded = expand_directory(metadata.directory)
        await self.client.post_startup(PostStartupRequest(agent_version(), expanded))
        self.metadata = metadata
        first = not self._first_connection_done
        self._first_connection_done = True
        log.debug("agent.startup_posted", version=agent_version(), expanded_directory=expanded)
        for hook in self._metadata_hooks:
            await self._run_hook(hook, metadata, first)
        if self._stats_task is None:
            reporter = StatsReporter(self.client.report_stats, self.stats, rng=self._rng)
            self._stats_task = self.start_task("stats", reporter.run)
        node = Node.new_agent_node(metadata.derpmap.first_region_id())
        await self._coordinator.serve(
            self.client.websocket_url("/workspaceagents/me/coordinate"),
            self.client.websocket_headers(),
            self.client.verify,
            node,
            on_connected=lambda: self._on_connected(expanded, first),
        )

    async def _run_hook(self, hook: MetadataHook, metadata: Metadata, first: bool) -> None:
        # A component that fails to take the new metadata must not keep the agent off the
        # coordinate socket; it is logged (throttled) and the attempt goes on.
        try:
            await hook(metadata, first)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._hook_throttle.failure(error_key(exc), time.monotonic()) is not None:
                log.error(
                    "agent.metadata_hook_failed",
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    error=str(exc),
                    exc_info=exc,
                )

    # -------------------------------------------------------------- shutdown

    async def shutdown(self, budget: float = SHUTDOWN_BUDGET) -> None:
        """Close politely, stop children (TERM, grace, KILL), release the client.

        Every step is bounded so the whole takes at most ``budget`` seconds.
        """
        deadline = time.monotonic() + budget
        log.info("agent.shutting_down")
        for hook in self._shutdown_hooks:
            try:
                hook()
            except Exception as exc:  # one component's bug must not stop the rest
                log.error("agent.shutdown_hook_failed", error=str(exc), exc_info=exc)
        try:
            await asyncio.wait_for(self._coordinator.aclose(), timeout=1.0)
        except (TimeoutError, OSError, WsagentError):
            pass
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=TASK_STOP_TIMEOUT)
        # Leave a little time after the KILL for the client to close.
        grace = max(0.0, min(self.config.shutdown_grace, deadline - time.monotonic() - 0.3))
        await self.children.terminate_all(grace)
        try:
            await asyncio.wait_for(
                self.client.aclose(), timeout=max(0.1, deadline - time.monotonic())
            )
        except (TimeoutError, OSError):
            pass
        log.info("agent.stopped")


async def _cancel(task: asyncio.Task[None], limit: float) -> None:
    """Cancel ``task`` and wait for its cleanup, but not for longer than ``limit`` seconds."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=limit)
    if done and not task.cancelled():
        task.exception()  # retrieved: a failure while stopping is not worth a warning


def _is_outdated_build(exc: BaseException | None) -> bool:
    return isinstance(exc, ApiError) and exc.status == 403 and "outdated" in exc.detail


async def run_until_signalled(agent: Agent, early: list[int] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT/SIGHUP; a second signal exits at once.

    ``early`` holds signals that arrived before the loop took over (see agent.cli).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled_at: list[float] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("agent.forced_exit", signal=name)
            agent.children.kill_all_now()
            close_stream(timeout=0.2)
            os._exit(128 + signum)
        log.info("agent.signal_received", signal=name)
        signalled_at.append(time.monotonic())
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    for pending in early or ():
        on_signal(pending)
    try:
        await agent.run(stop)
    finally:
        # The 5 s promise runs from the signal: stopping the attempt already used some.
        spent = time.monotonic() - signalled_at[0] if signalled_at else 0.0
        await agent.shutdown(max(1.0, SHUTDOWN_BUDGET - spent))
    return 0
