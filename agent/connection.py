"""The connection loop: attempt after attempt, reach the control plane and hold the
coordinate socket, with one retry policy between attempts.

One attempt: exchange the token (instance-identity auth), fetch the metadata, post
startup, hand the metadata to the components (``on_startup``), then serve the coordinate
socket until it fails. Every collaborator is a callable given by the composition root.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import structlog

from agent.clock import Clock, sleep_unless_set
from agent.errors import ApiError, WsagentError
from agent.paths import expand_directory
from agent.retry import Retry, is_retryable
from agent.sdk.models import Metadata, PostStartupRequest
from agent.sdk.tailnet import Node

log = structlog.get_logger()

BACKOFF_FLOOR: Final = 0.1
BACKOFF_CEILING: Final = 10.0
# An outdated build needs a new token, which retrying cannot bring: retry this slowly.
OUTDATED_BUILD_DELAY: Final = BACKOFF_CEILING * 6
# A connection that lived this long counts as healthy: the next failure starts the
# backoff from the floor again, and its failures are news again in the log.
HEALTHY_CONNECTION_SECONDS: Final = 30.0
ATTEMPT_STOP_TIMEOUT: Final = 1.5

# Connection states, as the metrics endpoint labels them.
STATE_CONNECTING: Final = "connecting"
STATE_CONNECTED: Final = "connected"
STATE_BACKOFF: Final = "backoff"
CONNECTION_STATES: Final = (STATE_CONNECTING, STATE_CONNECTED, STATE_BACKOFF)


class Tokens(Protocol):
    token: str


TokenExchange = Callable[[], Awaitable[str]]
FetchMetadata = Callable[[], Awaitable[Metadata]]
PostStartup = Callable[[PostStartupRequest], Awaitable[None]]
OnStartup = Callable[[Metadata, bool], Awaitable[None]]
# serve(node, on_connected): dial the coordinate socket and hold it; always raises.
Serve = Callable[[Node, Callable[[], None]], Awaitable[None]]


class ConnectionLoop:
    def __init__(
        self,
        *,
        version: str,
        tokens: Tokens,
        exchange: TokenExchange | None,
        fetch_metadata: FetchMetadata,
        post_startup: PostStartup,
        on_startup: OnStartup,
        serve: Serve,
        remember_secret: Callable[[str], None],
        clock: Clock,
        rng: random.Random,
        reconnect_max_delay: float,
        outdated_needs_new_token: bool,
    ) -> None:
        self.version = version
        self._tokens = tokens
        self.exchange = exchange
        self._fetch_metadata = fetch_metadata
        self._post_startup = post_startup
        self._on_startup = on_startup
        self._serve = serve
        self._remember_secret = remember_secret
        self._clock = clock
        ceiling = reconnect_max_delay
        self._retry = Retry(min(BACKOFF_FLOOR, ceiling), ceiling, rng=rng)
        self._outdated_needs_new_token = outdated_needs_new_token
        self.metadata: Metadata | None = None
        self._first_connection_done = False
        # Connection bookkeeping for the log: see _on_connected.
        self._connected_at: float | None = None
        self._failed_attempts = 0
        self._last_attempt_flapped = False
        # Read-only counters for the metrics endpoint and status lines.
        self.connection_state = STATE_CONNECTING
        self.attempts_total = 0
        self.connections_total = 0
        self.token_exchanges_total = 0
        self.token_exchange_failures_total = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and reconnect until ``stop`` is set. A non-retryable error (a bad
        setting) ends the loop by raising."""
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
            error = exc if exc is not None else RuntimeError("attempt ended")
            if not is_retryable(error):
                raise error  # e.g. CODER_AGENT_AUTH=auto found no cloud
            now = self._clock.monotonic()
            connected_for = None if self._connected_at is None else now - self._connected_at
            healthy = connected_for is not None and connected_for >= HEALTHY_CONNECTION_SECONDS
            if healthy:
                self._retry.succeeded()
            # Connected, then dropped at once: the next "connected" is not news.
            self._last_attempt_flapped = connected_for is not None and not healthy
            if connected_for is None:
                self._failed_attempts += 1
            failure = self._retry.failed(error, now)
            if failure.repeats is not None:
                _log_failure(error, failure.repeats)
            delay = failure.delay
            if _is_outdated_build(error) and self._outdated_needs_new_token:
                # Coder loops forever here (coder/coder#3485); a new token is needed, so
                # retry slowly and say so instead of hammering the server.
                delay = OUTDATED_BUILD_DELAY
            await sleep_unless_set(self._clock, stop, delay)

    async def _attempt(self) -> None:
        await self._refresh_token()
        metadata = await self._fetch_metadata()
        expanded = expand_directory(metadata.directory)
        await self._post_startup(PostStartupRequest(self.version, expanded))
        self.metadata = metadata
        first = not self._first_connection_done
        self._first_connection_done = True
        log.debug("agent.startup_posted", version=self.version, expanded_directory=expanded)
        await self._on_startup(metadata, first)
        node = Node.new_agent_node(metadata.derpmap.first_region_id())
        await self._serve(node, lambda: self._on_connected(expanded, first))

    async def _refresh_token(self) -> None:
        if self.exchange is None:
            return  # token auth: the configured token is the token
        try:
            token = await self.exchange()
        except Exception:
            self.token_exchange_failures_total += 1
            raise
        self.token_exchanges_total += 1
        if token != self._tokens.token:
            self._remember_secret(token)
            self._tokens.token = token

    def _on_connected(self, expanded: str, first: bool) -> None:
        """One info line per real (re)connection; a socket that flaps logs at debug."""
        self._connected_at = self._clock.monotonic()
        self.connection_state = STATE_CONNECTED
        self.connections_total += 1
        fields: dict[str, object] = {
            "version": self.version,
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


def _log_failure(exc: BaseException, repeats: int) -> None:
    event = "agent.run_failed"
    fields: dict[str, object] = {"error": str(exc), "error_type": type(exc).__name__}
    if repeats > 1:
        fields["repeats"] = repeats
    if not isinstance(exc, WsagentError):
        fields["exc_info"] = exc  # not an expected failure: keep the traceback
    if _is_outdated_build(exc):
        fields["hint"] = (
            "this agent's build is outdated; restart the agent with the new build's token"
        )
        log.error(event, **fields)
    else:
        log.warning(event, **fields)


def _is_outdated_build(exc: BaseException | None) -> bool:
    return isinstance(exc, ApiError) and exc.status == 403 and "outdated" in exc.detail


async def _cancel(task: asyncio.Task[None], limit: float) -> None:
    """Cancel ``task`` and wait for its cleanup, but not for longer than ``limit`` seconds."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=limit)
    if done and not task.cancelled():
        task.exception()  # retrieved: a failure while stopping is not worth a warning
