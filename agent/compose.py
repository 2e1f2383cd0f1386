"""The composition root: :func:`compose` builds every part of the agent and hands each its
collaborators. Components never import each other; this is the one place that knows them
all, so reading :func:`compose` top to bottom is reading the agent's start-up.

The optional parts stay cheap until used: the identity code is imported only for
instance-identity auth; app health, listening ports, terminals, byte streams and the
metrics endpoint are built here but import their component on first use
(agent/ondemand.py); the SSH server's glue and asyncssh come with the first SSH stream
(agent/compose_remote.py). ``wsagent agent`` imports this module only after its first
request has gone out (agent/firstrequest.py).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING

import structlog

from agent import lifecycle, paths, procprio, sdnotify, sessionenv, shutdown, vscode
from agent.agentmetadata import MetadataCollector
from agent.children import ChildRegistry
from agent.client import ControlPlaneClient
from agent.clock import SYSTEM_CLOCK, Clock
from agent.compose_remote import SSHAccess
from agent.config import AUTH_TOKEN, AgentConfig, default_state_dir
from agent.connection import ConnectionLoop, TokenExchange
from agent.coordinator import Coordinator, CoordinatorSession
from agent.daemon import Agent
from agent.firstrequest import FirstRequest
from agent.ondemand import (
    AppHealth,
    ListeningPorts,
    Streams,
    Terminals,
    build_metrics,
    serve_metrics,
)
from agent.sdk.extensions import Extension, ListeningPortsRequest, PTYRequest, StreamRequest
from agent.sdk.models import Metadata
from agent.sdk.settings import parse_duration
from agent.sdk.tailnet import Node
from agent.startup import LOG_FILE_NAME, WorkspaceStart
from agent.startuplogs import StartupLogSender
from agent.stats import StatsCollector, StatsReporter
from agent.supervisor import Supervisor, TaskFactory
from wscommon import __version__
from wscommon.logs import REDACTOR

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = structlog.get_logger()

ExtensionHandler = Callable[[Extension, CoordinatorSession], Awaitable[None]]


def agent_version() -> str:
    return f"v{__version__}"


def compose(
    config: AgentConfig,
    *,
    clock: Clock = SYSTEM_CLOCK,
    rng: random.Random | None = None,
    environ: MutableMapping[str, str] | None = None,
    token_exchange: TokenExchange | None = None,
    first_request: FirstRequest | None = None,
) -> Agent:
    """Build the agent for ``config``. Nothing runs until :meth:`Agent.run`.

    ``token_exchange`` replaces the one ``config.auth`` chooses (tests fake a cloud).
    ``first_request`` carries the client and the metadata request already sent.
    """
    environ = os.environ if environ is None else environ
    rng = rng or random.Random()
    version = agent_version()

    # The control plane's client, with the token it sends (each identity exchange
    # replaces it). ``wsagent agent`` made it, and sent the first metadata request, before
    # importing this module (agent/firstrequest.py).
    first = first_request or FirstRequest(config)
    tokens, client = first.tokens, first.client
    if config.token:
        REDACTOR.add(config.token)
    exchange = token_exchange or identity_exchange(config, client, clock)

    # What every part shares: the child processes to stop at shutdown, the traffic
    # counters, and the supervisor of background tasks.
    children = ChildRegistry(clock, procprio.ChildPriority.from_environ(environ))
    traffic = StatsCollector()
    supervisor = Supervisor(clock)

    # systemd's notify protocol; a no-op outside systemd. Reads (and removes) its
    # variables now, so the startup script and shells do not inherit them.
    notifier = sdnotify.Notifier.from_environ(environ, os.getpid(), clock)
    lifecycle_posted = [lifecycle.CREATED]  # for systemd's STATUS= line

    # The workspace start: lifecycle reporting, VS Code settings and the startup script,
    # on the first connection; the lifecycle is re-reported after each reconnect. The
    # script's output is streamed to the control plane as well as written to its file.
    async def post_lifecycle(state: str) -> None:
        lifecycle_posted[0] = state
        if state == lifecycle.SHUTTING_DOWN:
            notifier.stopping()  # the shutdown script is the start of stopping
        await client.post_lifecycle(state)

    startup_logs = StartupLogSender(client.patch_startup_logs, clock=clock, rng=rng)
    executable = sessionenv.wsagent_executable()
    workspace_start = WorkspaceStart(
        post_lifecycle=post_lifecycle,
        children=children,
        log_path=config.log_dir / LOG_FILE_NAME,
        max_log_bytes=config.startup_log_max_bytes,
        grace=config.shutdown_grace,
        shell=paths.login_shell,
        environment=lambda md: sessionenv.session_environment(md, tokens.token, executable),
        working_directory=sessionenv.working_directory,
        prepare=lambda md: vscode.apply_overrides(
            md.git_auth_configs, environ, paths.home_directory()
        ),
        output=startup_logs,
        clock=clock,
        rng=rng,
    )

    # The shutdown script, on the first signal while still connected: shutting_down, the
    # script, then off / shutdown_error / shutdown_timeout.
    shutdown_script = shutdown.ShutdownScript(
        children=children,
        log_path=config.log_dir / shutdown.LOG_FILE_NAME,
        max_log_bytes=config.startup_log_max_bytes,
        shell=paths.login_shell,
        environment=lambda md: sessionenv.session_environment(md, tokens.token, executable),
        working_directory=sessionenv.working_directory,
        watchdog_grace=config.shutdown_grace,
        extend_stop=notifier.extend_timeout,
    )

    # Agent metadata: the template's commands, each on its interval, results posted.
    agent_metadata = MetadataCollector(
        client.post_metadata,
        shell=paths.login_shell,
        environment=lambda md: sessionenv.session_environment(md, tokens.token, executable),
        working_directory=sessionenv.working_directory,
        children=children,
        clock=clock,
    )

    # App health, traffic statistics: long-lived reporters fed by each attempt's metadata.
    app_health = AppHealth(client.post_app_health, supervisor, clock)
    stats_reporter = StatsReporter(client.report_stats, traffic, clock=clock, rng=rng)

    # What the server asks over the coordinate socket: listening ports, terminals, and
    # byte streams (SSH, forwarded TCP ports).
    own_port = config.metrics_address[1] if config.metrics_address else -1
    listening_ports = ListeningPorts(clock, own_port)
    terminals = Terminals(config, client, tokens, children, traffic, clock, executable)
    ssh = SSHAccess(
        client,
        tokens,
        children,
        supervisor,
        config.state_dir or default_state_dir(environ),
        executable,
    )
    streams = Streams(client, traffic, ssh.connect)
    coordinator = Coordinator(
        route_extensions(
            {
                ListeningPortsRequest: listening_ports.serve,
                PTYRequest: terminals.serve,
                StreamRequest: streams.serve,
            }
        )
    )

    # One connection attempt: token, metadata, startup post, then (below) the components
    # take the metadata, then the coordinate socket is held until it fails.
    async def after_startup(metadata: Metadata, first: bool) -> None:
        terminals.metadata = metadata
        await supervisor.isolate("ssh", ssh.on_metadata(metadata, first))
        if not first:
            startup_logs.kick()  # a new connection: pending lines go out now
        await supervisor.isolate("workspace_start", workspace_start.on_metadata(metadata, first))
        await supervisor.isolate("apphealth", app_health.on_metadata(metadata))
        agent_metadata.update(metadata)
        if first:
            supervisor.start("stats", stats_reporter.run)

    async def serve_coordinate(node: Node, on_connected: Callable[[], None]) -> None:
        await coordinator.serve(
            client.websocket_url("/workspaceagents/me/coordinate"),
            client.websocket_headers(),
            client.verify,
            node,
            on_connected=on_connected,
        )

    connection = ConnectionLoop(
        version=version,
        tokens=tokens,
        exchange=exchange,
        fetch_metadata=first.fetch_metadata,
        post_startup=client.post_startup,
        on_startup=after_startup,
        serve=serve_coordinate,
        remember_secret=REDACTOR.add,
        clock=clock,
        rng=rng,
        reconnect_max_delay=config.reconnect_max_delay,
        outdated_needs_new_token=config.auth == AUTH_TOKEN,
    )

    # Background tasks, started with the run and supervised until shutdown.
    background: list[tuple[str, TaskFactory]] = []
    on_shutdown: list[Callable[[], None]] = []
    metrics: AgentMetrics | None = None
    if notifier.enabled:

        def status() -> str:
            return f"connection: {connection.connection_state}; lifecycle: {lifecycle_posted[0]}"

        background.append(("sdnotify", lambda: notify_systemd(notifier, status)))
        on_shutdown.append(notifier.stopping)
    block_loop = debug_block_loop(environ)
    if block_loop is not None:
        background.append(("debug_block_loop", block_loop))
    if config.metrics_address is not None:
        metrics = build_metrics(
            connection,
            traffic,
            workspace_start,
            app_health,
            terminals,
            streams,
            startup_logs=startup_logs,
            agent_metadata=agent_metadata,
        )
        page = metrics
        host, port = config.metrics_address
        background.append(("metrics", lambda: serve_metrics(page, host, port)))
    background.append(("startuplogs", startup_logs.run))
    on_shutdown += [
        first.discard,
        agent_metadata.close,
        startup_logs.close,
        workspace_start.close,
        listening_ports.close,
        streams.close,
        ssh.close,
    ]

    return Agent(
        connection=connection,
        supervisor=supervisor,
        children=children,
        clock=clock,
        shutdown_grace=config.shutdown_grace,
        background=background,
        on_shutdown=on_shutdown,
        close_coordinate_socket=coordinator.aclose,
        close_client=client.aclose,
        metrics=metrics,
        shutdown_phases=[lambda: shut_down_workspace(workspace_start, shutdown_script)],
    )


# ------------------------------------------------------------------ the parts, in order


async def shut_down_workspace(start: WorkspaceStart, script: shutdown.ShutdownScript) -> None:
    """shutting_down, the shutdown script, then its outcome, reported before the agent
    lets go of its connection (bounded: a server that is away does not hold the exit)."""
    if not start.begin_shutdown() or start.metadata is None:
        return
    outcome = await script.run(start.metadata)
    start.finish_shutdown(
        {
            shutdown.OK: lifecycle.SHUTDOWN_OK,
            shutdown.ERROR: lifecycle.SHUTDOWN_FAILED,
            shutdown.TIMEOUT: lifecycle.SHUTDOWN_TIMED_OUT,
        }[outcome]
    )
    try:
        async with asyncio.timeout(shutdown.REPORT_WAIT):
            await start.report_pending()
    except TimeoutError:
        log.warning("shutdown.states_not_reported", timeout_seconds=shutdown.REPORT_WAIT)


def identity_exchange(
    config: AgentConfig, client: ControlPlaneClient, clock: Clock
) -> TokenExchange | None:
    """Instance-identity auth: exchange the cloud's signed proof for a token each attempt.
    None for token auth, which never imports the identity code."""
    if config.auth == AUTH_TOKEN:
        return None
    from agent.identity.exchange import IdentityExchange
    from agent.identity.nonce import ServerNonceSource

    nonces = ServerNonceSource(config.url, verify=client.verify)
    return IdentityExchange(config, client, nonce_source=nonces, clock=clock.monotonic)


async def notify_systemd(notifier: sdnotify.Notifier, status: Callable[[], str]) -> None:
    """READY=1 once the first connection attempt has started, then STATUS= and WATCHDOG=1
    from the event loop."""
    if not notifier.is_ready:  # a restarted task (after a crash) is not news
        await asyncio.sleep(0)  # one turn: the run loop's first attempt starts first
        notifier.ready(status())
    await notifier.run_watchdog(status)


def debug_block_loop(environ: Mapping[str, str]) -> TaskFactory | None:
    """TEST HOOK (docs/operations.md): block the loop on purpose to prove the watchdog."""
    after = environ.get("CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER", "")
    if not after:
        return None
    seconds = parse_duration(after, "CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER")
    duration = parse_duration(
        environ.get("CODER_AGENT_DEBUG_BLOCK_LOOP_FOR", "") or "3600",
        "CODER_AGENT_DEBUG_BLOCK_LOOP_FOR",
    )

    async def arm() -> None:
        sdnotify.block_loop_later(seconds, duration)

    return arm


def route_extensions(handlers: Mapping[type, ExtensionHandler]) -> ExtensionHandler:
    """One handler per extension type; an unknown one is logged and ignored."""

    async def route(extension: Extension, session: CoordinatorSession) -> None:
        handler = handlers.get(type(extension))
        if handler is None:
            log.warning("agent.extension_unsupported", type=type(extension).__name__)
            return
        await handler(extension, session)

    return route
