"""The composition root: :func:`compose` builds every part of the agent and hands each its
collaborators. Components never import each other; this is the one place that knows them
all, so reading :func:`compose` top to bottom is reading the agent's start-up.

The optional parts stay cheap until used: the identity code is imported only for
instance-identity auth, the metrics endpoint only when it is configured, app health on
the first metadata with a health check, and terminals (with websockets and ptyprocess) on
the first terminal request.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sized
from typing import TYPE_CHECKING

import structlog

from agent import lifecycle, paths, sdnotify, sessionenv, shutdown, vscode
from agent.children import ChildRegistry
from agent.client import API_PREFIX, ControlPlaneClient, TokenHolder, tls_context
from agent.clock import SYSTEM_CLOCK, Clock
from agent.config import AUTH_TOKEN, AgentConfig
from agent.connection import CONNECTION_STATES, STATE_CONNECTED, ConnectionLoop, TokenExchange
from agent.coordinator import Coordinator, CoordinatorSession, dial
from agent.daemon import Agent
from agent.ports import PortScanner
from agent.sdk.extensions import (
    PTY_DIAL_PATH,
    STREAM_DIAL_PATH,
    TARGET_TCP,
    Extension,
    ListeningPortsRequest,
    ListeningPortsResponse,
    PTYRequest,
    StreamRequest,
)
from agent.sdk.models import Metadata
from agent.sdk.settings import parse_duration
from agent.sdk.tailnet import Node
from agent.sdk.workspaceagents import ListeningPort
from agent.startup import LOG_FILE_NAME, WorkspaceStart
from agent.startuplogs import StartupLogSender
from agent.stats import StatsCollector, StatsReporter
from agent.supervisor import Supervisor, TaskFactory
from wscommon import __version__
from wscommon.logs import REDACTOR

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from agent.apphealth import AppHealthReporter
    from agent.metrics import AgentMetrics
    from agent.sdk.promtext import Family
    from agent.streams import StreamHandler

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
) -> Agent:
    """Build the agent for ``config``. Nothing runs until :meth:`Agent.run`.

    ``token_exchange`` replaces the one ``config.auth`` chooses (tests fake a cloud).
    """
    environ = os.environ if environ is None else environ
    rng = rng or random.Random()
    version = agent_version()

    # The control plane's client, with the token it sends (each identity exchange
    # replaces it).
    tokens = TokenHolder(config.token)
    if config.token:
        REDACTOR.add(config.token)
    client = ControlPlaneClient(
        config.url,
        tokens,
        verify=tls_context(
            insecure_skip_verify=config.insecure_skip_verify,
            ca_file=config.ca_file,
            url=config.url,
        ),
    )
    exchange = token_exchange or identity_exchange(config, client, clock)

    # What every part shares: the child processes to stop at shutdown, the traffic
    # counters, and the supervisor of background tasks.
    children = ChildRegistry(clock)
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

    # App health, traffic statistics: long-lived reporters fed by each attempt's metadata.
    app_health = AppHealth(client.post_app_health, supervisor, clock)
    stats_reporter = StatsReporter(client.report_stats, traffic, clock=clock, rng=rng)

    # What the server asks over the coordinate socket: listening ports, terminals, and
    # byte streams (SSH, forwarded TCP ports).
    scanner = PortScanner(clock=clock.monotonic)
    own_port = config.metrics_address[1] if config.metrics_address else -1
    terminals = Terminals(config, client, tokens, children, traffic, clock, executable)
    streams = Streams(client, traffic)
    coordinator = Coordinator(
        route_extensions(
            {
                ListeningPortsRequest: answer_listening_ports(scanner, own_port),
                PTYRequest: terminals.serve,
                StreamRequest: streams.serve,
            }
        )
    )

    # One connection attempt: token, metadata, startup post, then (below) the components
    # take the metadata, then the coordinate socket is held until it fails.
    async def after_startup(metadata: Metadata, first: bool) -> None:
        terminals.metadata = metadata
        if not first:
            startup_logs.kick()  # a new connection: pending lines go out now
        await supervisor.isolate("workspace_start", workspace_start.on_metadata(metadata, first))
        await supervisor.isolate("apphealth", app_health.on_metadata(metadata))
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
        fetch_metadata=client.metadata,
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
            connection, traffic, workspace_start, app_health, terminals, streams
        )
        page = metrics
        host, port = config.metrics_address
        background.append(("metrics", lambda: serve_metrics(page, host, port)))
    background.append(("startuplogs", startup_logs.run))
    on_shutdown += [startup_logs.close, workspace_start.close, scanner.close, streams.close]

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


class AppHealth:
    """One long-lived app-health reporter, made on the first metadata with a health check
    (nothing is imported before). Each later metadata updates its probers in place and
    re-posts the map, so a server that missed a post catches up after a reconnect."""

    def __init__(
        self,
        post: Callable[[dict[str, str]], Awaitable[None]],
        supervisor: Supervisor,
        clock: Clock,
    ) -> None:
        self._post = post
        self._supervisor = supervisor
        self._clock = clock
        self.reporter: AppHealthReporter | None = None

    async def on_metadata(self, metadata: Metadata) -> None:
        from agent.apphealth import AppHealthReporter, probed_apps

        if self.reporter is not None:
            self.reporter.update(metadata.apps)
            self.reporter.resend()
        elif probed_apps(metadata.apps):
            self.reporter = AppHealthReporter(metadata.apps, self._post, clock=self._clock)
            self._supervisor.start("apphealth", self.reporter.run)

    def healths(self) -> dict[str, str]:
        return dict(self.reporter.healths) if self.reporter is not None else {}


def answer_listening_ports(scanner: PortScanner, own_port: int) -> ExtensionHandler:
    """Answer the server's listening-ports requests. The agent's own metrics port is not
    the workspace's to forward (Coder hides its own)."""

    async def answer(request: Extension, session: CoordinatorSession) -> None:
        assert isinstance(request, ListeningPortsRequest)
        try:
            ports = await asyncio.to_thread(scanner.scan)
        except OSError as exc:
            reply = ListeningPortsResponse(request.request_id, error=f"scan failed: {exc}")
        else:
            found = tuple(
                ListeningPort(p.process_name, p.network, p.port)
                for p in ports
                if p.port != own_port
            )
            reply = ListeningPortsResponse(request.request_id, found)
        await session.send_json(reply.to_json())

    return answer


class Terminals:
    """Reconnecting terminals: dial back to the control plane for each PTYRequest.

    agent.pty (and with it websockets and ptyprocess) is imported on the first request, so
    terminals cost nothing at start-up and nothing to an agent that never opens one."""

    def __init__(
        self,
        config: AgentConfig,
        client: ControlPlaneClient,
        tokens: TokenHolder,
        children: ChildRegistry,
        traffic: StatsCollector,
        clock: Clock,
        executable: str,
    ) -> None:
        self._config = config
        self._client = client
        self._tokens = tokens
        self._children = children
        self._traffic = traffic
        self._clock = clock
        self._executable = executable
        self._handle: Callable[[PTYRequest], Awaitable[None]] | None = None
        self.sessions: Sized = ()
        self.metadata: Metadata | None = None  # the latest, for each new shell

    async def serve(self, request: Extension, session: CoordinatorSession) -> None:
        del session
        assert isinstance(request, PTYRequest)
        if self._handle is None:
            self._handle = self._build()
        await self._handle(request)

    def _build(self) -> Callable[[PTYRequest], Awaitable[None]]:
        from urllib.parse import urlencode

        from agent import motd
        from agent.pty import CommandBuilder, DialBackHandler, SessionManager

        def environment() -> Mapping[str, str]:
            md = self.metadata
            if md is None:
                return os.environ
            return sessionenv.session_environment(md, self._tokens.token, self._executable)

        def motd_text() -> str:
            md = self.metadata
            return motd.read_motd(md.motd_file, paths.home_directory()) if md else ""

        def directory() -> str:
            md = self.metadata
            return sessionenv.working_directory(md) if md else ""

        builder = CommandBuilder(
            environment=environment,
            motd=motd_text,
            directory=directory,
            shell=paths.login_shell,
            home=paths.home_directory,
        )
        manager = SessionManager(
            launch=builder.build,
            stats=self._traffic,
            clock=self._clock,
            max_sessions=self._config.pty_max_sessions,
            idle_timeout=self._config.pty_idle_timeout,
            scrollback_bytes=self._config.pty_scrollback_bytes,
            register_group=self._children.add,
            unregister_group=self._children.discard,
        )
        self.sessions = manager.sessions
        client = self._client

        async def dial_back(session_id: str) -> ClientConnection:
            path = PTY_DIAL_PATH.removeprefix(API_PREFIX)
            url = client.websocket_url(path, urlencode({"session": session_id}))
            return await dial(url, client.websocket_headers(), client.verify)

        return DialBackHandler(manager, dial_back, self._traffic).handle


class Streams:
    """Byte streams (SSH, workspace TCP ports): dial back for each StreamRequest.

    agent.streams (and websockets) is imported on the first request; the SSH server's
    connector imports asyncssh only when the first SSH stream arrives."""

    def __init__(self, client: ControlPlaneClient, traffic: StatsCollector) -> None:
        self._client = client
        self._traffic = traffic
        self.handler: StreamHandler | None = None

    @property
    def active(self) -> int:
        return self.handler.active if self.handler is not None else 0

    async def serve(self, request: Extension, session: CoordinatorSession) -> None:
        assert isinstance(request, StreamRequest)
        if self.handler is None:
            self.handler = self._build()
        await self.handler.handle(request, session.send_json)

    def close(self) -> None:
        if self.handler is not None:
            self.handler.cancel_all()

    def _build(self) -> StreamHandler:
        from urllib.parse import urlencode

        from agent.streams import Connection, StreamHandler, connect_loopback

        client = self._client

        async def dial_back(session_id: str) -> ClientConnection:
            path = STREAM_DIAL_PATH.removeprefix(API_PREFIX)
            url = client.websocket_url(path, urlencode({"session": session_id}))
            # A short receive queue: a stalled target holds at most a few messages here.
            return await dial(url, client.websocket_headers(), client.verify, max_queue=4)

        async def tcp(request: StreamRequest) -> Connection:
            return await connect_loopback(request.target.port)

        return StreamHandler(dial_back, {TARGET_TCP: tcp}, self._traffic)


def route_extensions(handlers: Mapping[type, ExtensionHandler]) -> ExtensionHandler:
    """One handler per extension type; an unknown one is logged and ignored."""

    async def route(extension: Extension, session: CoordinatorSession) -> None:
        handler = handlers.get(type(extension))
        if handler is None:
            log.warning("agent.extension_unsupported", type=type(extension).__name__)
            return
        await handler(extension, session)

    return route


def build_metrics(
    connection: ConnectionLoop,
    traffic: StatsCollector,
    workspace_start: WorkspaceStart,
    app_health: AppHealth,
    terminals: Terminals,
    streams: Streams,
) -> AgentMetrics:
    """The Prometheus series, each read from its part at scrape time."""
    from agent.metrics import AgentMetrics
    from agent.sdk.promtext import COUNTER, GAUGE, Family, gauge

    metrics = AgentMetrics()

    def agent_families() -> list[Family]:
        state = connection.connection_state
        exchanges = (
            ((("result", "ok"),), connection.token_exchanges_total),
            ((("result", "error"),), connection.token_exchange_failures_total),
        )
        relayed = (
            ((("direction", "rx"),), traffic.rx_bytes_total),
            ((("direction", "tx"),), traffic.tx_bytes_total),
        )
        return [
            gauge("wsagent_agent_info", "Agent version.", 1, (("version", connection.version),)),
            gauge(
                "wsagent_agent_connected",
                "1 while the coordinate socket is up.",
                int(state == STATE_CONNECTED),
            ),
            Family(
                "wsagent_agent_connection_state",
                GAUGE,
                "Connection state of the run loop (1 for the current one).",
                [("", (("state", s),), int(s == state)) for s in CONNECTION_STATES],
            ),
            Family(
                "wsagent_agent_connection_attempts_total",
                COUNTER,
                "Connection attempts of the run loop.",
                [("", (), connection.attempts_total)],
            ),
            Family(
                "wsagent_agent_reconnects_total",
                COUNTER,
                "Successful connections after the first.",
                [("", (), max(0, connection.connections_total - 1))],
            ),
            Family(
                "wsagent_agent_token_exchanges_total",
                COUNTER,
                "Instance-identity token exchanges (0 with token auth).",
                [("", labels, value) for labels, value in exchanges],
            ),
            Family(
                "wsagent_agent_relayed_bytes_total",
                COUNTER,
                "Bytes relayed by terminal sessions (rx: from the client).",
                [("", labels, value) for labels, value in relayed],
            ),
        ]

    states = (
        lifecycle.CREATED,
        lifecycle.STARTING,
        lifecycle.START_TIMEOUT,
        lifecycle.START_ERROR,
        lifecycle.READY,
        lifecycle.SHUTTING_DOWN,
        lifecycle.SHUTDOWN_TIMEOUT,
        lifecycle.SHUTDOWN_ERROR,
        lifecycle.OFF,
    )

    def lifecycle_families() -> list[Family]:
        current = workspace_start.lifecycle.state
        samples = [("", (("state", s),), int(s == current)) for s in states]
        return [
            Family(
                "wsagent_agent_lifecycle_state",
                GAUGE,
                "Lifecycle state of the workspace start (1 for the current one).",
                samples,
            )
        ]

    def app_families() -> list[Family]:
        counts = dict.fromkeys(("initializing", "healthy", "unhealthy", "disabled"), 0)
        for health in app_health.healths().values():
            counts[health] = counts.get(health, 0) + 1
        samples = [("", (("health", h),), n) for h, n in counts.items()]
        return [Family("wsagent_agent_apps", GAUGE, "Apps by health.", samples)]

    metrics.add(agent_families)
    metrics.add(lifecycle_families)
    metrics.add(app_families)
    metrics.add_gauge(
        "wsagent_agent_pty_sessions", "Open terminal sessions.", lambda: len(terminals.sessions)
    )
    metrics.add_gauge(
        "wsagent_agent_streams",
        "Open byte streams (SSH connections and forwarded TCP connections).",
        lambda: streams.active,
    )
    return metrics


async def serve_metrics(metrics: AgentMetrics, host: str, port: int) -> None:
    """The Prometheus endpoint until shutdown. A port that cannot be bound is logged once
    and the agent runs on without metrics."""
    from agent.metrics import MetricsServer

    server = MetricsServer(host, port, metrics.render)
    if not await server.start():
        return
    try:
        await asyncio.Event().wait()  # until shutdown cancels the task
    finally:
        await server.close()
