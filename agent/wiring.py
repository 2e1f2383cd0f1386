"""Plugs the optional components (identity, startup, terminals, app health...) into the
agent. Kept apart from app.py so each component's wiring is one small function here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sized
from typing import TYPE_CHECKING

from agent.app import Agent
from agent.config import AUTH_TOKEN

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics
    from agent.sdk.extensions import PTYRequest
    from agent.startuplogs import StartupLogSender
    from agent.streams import StreamHandler


def wire_components(agent: Agent) -> None:
    """Attach every component to ``agent``. Components never import each other."""
    on_lifecycle = wire_systemd(agent)
    metrics = wire_metrics(agent)
    wire_identity(agent)
    wire_workspace_start(agent, metrics, on_lifecycle=on_lifecycle)
    wire_listening_ports(agent)
    wire_app_health(agent, metrics)
    wire_terminals(agent, metrics)
    wire_streams(agent, metrics)


def wire_metrics(agent: Agent) -> AgentMetrics | None:
    """The Prometheus endpoint (CODER_AGENT_METRICS_ADDRESS), or None when it is off.

    Agent-level series are registered here; the components' own are registered by their
    wire_* functions through the returned object. A port that cannot be bound is logged
    once and the agent runs on without metrics.
    """
    address = agent.config.metrics_address
    if address is None:
        return None
    import asyncio

    from agent.app import CONNECTION_STATES, agent_version
    from agent.metrics import AgentMetrics, MetricsServer
    from agent.sdk.promtext import COUNTER, GAUGE, Family, gauge

    metrics = AgentMetrics()

    def agent_families() -> list[Family]:
        state = agent.connection_state
        exchanges = (
            ((("result", "ok"),), agent.token_exchanges_total),
            ((("result", "error"),), agent.token_exchange_failures_total),
        )
        relayed = (
            ((("direction", "rx"),), agent.stats.rx_bytes_total),
            ((("direction", "tx"),), agent.stats.tx_bytes_total),
        )
        return [
            gauge("wsagent_agent_info", "Agent version.", 1, (("version", agent_version()),)),
            gauge(
                "wsagent_agent_connected",
                "1 while the coordinate socket is up.",
                int(state == "connected"),
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
                [("", (), agent.attempts_total)],
            ),
            Family(
                "wsagent_agent_reconnects_total",
                COUNTER,
                "Successful connections after the first.",
                [("", (), max(0, agent.connections_total - 1))],
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

    metrics.add(agent_families)
    server = MetricsServer(address[0], address[1], metrics.render)

    async def serve() -> None:
        if not await server.start():
            return
        try:
            await asyncio.Event().wait()  # until shutdown cancels the task
        finally:
            await server.close()

    agent.start_task("metrics", serve)
    return metrics


def wire_systemd(agent: Agent) -> Callable[[str], None]:
    """systemd's notify protocol (agent/sdnotify.py): READY=1 once the first connection
    attempt has started, STATUS= with the connection and lifecycle states, WATCHDOG=1 from
    the event loop, STOPPING=1 at shutdown. A no-op outside systemd. Returns the listener
    the workspace start calls with each lifecycle state."""
    import os

    from agent import sdnotify
    from agent.sdk.settings import parse_duration

    notifier = sdnotify.Notifier.from_environ(os.environ, os.getpid())
    # TEST HOOK (docs/operations.md): block the loop on purpose to prove the watchdog.
    block_after = os.environ.get("CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER", "")
    if block_after:
        block_for = os.environ.get("CODER_AGENT_DEBUG_BLOCK_LOOP_FOR", "") or "3600"
        sdnotify.block_loop_later(
            parse_duration(block_after, "CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER"),
            parse_duration(block_for, "CODER_AGENT_DEBUG_BLOCK_LOOP_FOR"),
        )
    lifecycle = ["created"]

    def on_lifecycle(state: str) -> None:
        lifecycle[0] = state

    if not notifier.enabled:
        return on_lifecycle

    def status() -> str:
        return f"connection: {agent.connection_state}; lifecycle: {lifecycle[0]}"

    async def run() -> None:
        import asyncio

        if not notifier.is_ready:  # a restarted task (after a crash) is not news
            await asyncio.sleep(0)  # one turn: the run loop's first attempt starts first
            notifier.ready(status())
        await notifier.run_watchdog(status)

    agent.start_task("sdnotify", run)
    agent.add_shutdown_hook(notifier.stopping)
    return on_lifecycle


def wire_identity(agent: Agent) -> None:
    """Instance-identity auth: exchange the cloud's signed proof for a token each attempt."""
    if agent.config.auth == AUTH_TOKEN:
        return
    # Imported only when needed, so token-auth agents never load the identity code.
    from agent.identity.exchange import IdentityExchange
    from agent.identity.nonce import ServerNonceSource

    nonces = ServerNonceSource(agent.config.url, verify=agent.client.verify)
    agent.set_token_exchange(IdentityExchange(agent.config, agent.client, nonce_source=nonces))


def wire_listening_ports(agent: Agent) -> None:
    """Answer the server's listening-ports requests on the coordinate socket."""
    import asyncio

    from agent.coordinator import CoordinatorSession
    from agent.ports import PortScanner
    from agent.sdk.extensions import Extension, ListeningPortsRequest, ListeningPortsResponse
    from agent.sdk.workspaceagents import ListeningPort

    scanner = PortScanner()
    # The agent's own metrics port is not the workspace's to forward (Coder hides its own).
    own_port = agent.config.metrics_address[1] if agent.config.metrics_address else -1

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

    agent.handle_extension(ListeningPortsRequest, answer)
    agent.add_shutdown_hook(scanner.close)  # its netlink socket


def wire_workspace_start(
    agent: Agent,
    metrics: AgentMetrics | None = None,
    *,
    on_lifecycle: Callable[[str], None] | None = None,
) -> None:
    """Startup script, lifecycle reporting and VS Code settings, on the first connection."""
    import os

    from agent import paths, sessionenv, vscode
    from agent.startup import LOG_FILE_NAME, WorkspaceStart

    async def post_lifecycle(state: str) -> None:
        if on_lifecycle is not None:
            on_lifecycle(state)  # systemd's STATUS= line
        await agent.client.post_lifecycle(state)

    executable = sessionenv.wsagent_executable()
    logs = wire_startup_logs(agent)
    start = WorkspaceStart(
        post_lifecycle=post_lifecycle,
        children=agent.children,
        log_path=agent.config.log_dir / LOG_FILE_NAME,
        max_log_bytes=agent.config.startup_log_max_bytes,
        grace=agent.config.shutdown_grace,
        shell=paths.login_shell,
        environment=lambda md: sessionenv.session_environment(md, agent.tokens.token, executable),
        working_directory=sessionenv.working_directory,
        prepare=lambda md: vscode.apply_overrides(
            md.git_auth_configs, os.environ, paths.home_directory()
        ),
        output=logs,
    )
    agent.add_metadata_hook(start.on_metadata)
    agent.add_shutdown_hook(start.close)
    if metrics is not None:
        from agent import lifecycle
        from agent.sdk.promtext import GAUGE, Family

        states = (
            lifecycle.CREATED,
            lifecycle.STARTING,
            lifecycle.START_TIMEOUT,
            lifecycle.START_ERROR,
            lifecycle.READY,
        )
        metrics.add(
            lambda: [
                Family(
                    "wsagent_agent_lifecycle_state",
                    GAUGE,
                    "Lifecycle state of the workspace start (1 for the current one).",
                    [("", (("state", s),), int(s == start.lifecycle.state)) for s in states],
                )
            ]
        )


def wire_startup_logs(agent: Agent) -> StartupLogSender:
    """Stream the startup script's output to the control plane (PATCH /me/startup-logs)."""
    from agent.sdk.models import Metadata
    from agent.startuplogs import StartupLogSender

    sender = StartupLogSender(agent.client.patch_startup_logs)

    async def on_metadata(metadata: Metadata, first: bool) -> None:
        del metadata
        if not first:
            sender.kick()  # a new connection: pending lines go out now

    agent.add_metadata_hook(on_metadata)
    agent.start_task("startuplogs", sender.run)
    agent.add_shutdown_hook(sender.close)
    return sender


def wire_app_health(agent: Agent, metrics: AgentMetrics | None = None) -> None:
    """Probe the apps' health checks with one long-lived reporter.

    Each attempt's metadata updates the probers in place (added apps are probed, removed
    ones stop) and re-posts the map, so a server that missed a post catches up after a
    reconnect. Nothing is imported or started until some app has a health check.
    """
    from agent.sdk.models import Metadata

    if TYPE_CHECKING:
        from agent.apphealth import AppHealthReporter

    reporters: list[AppHealthReporter] = []

    async def on_metadata(metadata: Metadata, first: bool) -> None:
        del first
        from agent.apphealth import AppHealthReporter, probed_apps

        if reporters:
            reporters[0].update(metadata.apps)
            reporters[0].resend()
        elif probed_apps(metadata.apps):
            reporter = AppHealthReporter(metadata.apps, agent.client.post_app_health)
            reporters.append(reporter)
            agent.start_task("apphealth", reporter.run)

    agent.add_metadata_hook(on_metadata)
    if metrics is not None:
        from agent.sdk.promtext import GAUGE, Family

        def app_families() -> list[Family]:
            counts = dict.fromkeys(("initializing", "healthy", "unhealthy", "disabled"), 0)
            for health in reporters[0].healths.values() if reporters else ():
                counts[health] = counts.get(health, 0) + 1
            samples = [("", (("health", h),), n) for h, n in counts.items()]
            return [Family("wsagent_agent_apps", GAUGE, "Apps by health.", samples)]

        metrics.add(app_families)


def wire_terminals(agent: Agent, metrics: AgentMetrics | None = None) -> None:
    """Reconnecting terminals: dial back to the control plane for each PTYRequest.

    agent.pty (and with it websockets and ptyprocess) is imported on the first request, so
    terminals cost nothing at start-up and nothing to an agent that never opens one."""
    from agent.coordinator import CoordinatorSession
    from agent.sdk.extensions import Extension, PTYRequest

    built: list[Callable[[PTYRequest], Awaitable[None]]] = []
    sessions: list[Sized] = []
    if metrics is not None:
        metrics.add_gauge(
            "wsagent_agent_pty_sessions",
            "Open terminal sessions.",
            lambda: len(sessions[0]) if sessions else 0,
        )

    async def serve(request: Extension, session: CoordinatorSession) -> None:
        del session
        assert isinstance(request, PTYRequest)
        if not built:
            built.append(_terminal_handler(agent, sessions.append))
        await built[0](request)

    agent.handle_extension(PTYRequest, serve)


def _terminal_handler(
    agent: Agent, expose: Callable[[Sized], None] = lambda sessions: None
) -> Callable[[PTYRequest], Awaitable[None]]:
    import os
    from collections.abc import Mapping
    from urllib.parse import urlencode

    from websockets.asyncio.client import ClientConnection

    from agent import motd, paths, sessionenv
    from agent.client import API_PREFIX
    from agent.coordinator import dial
    from agent.pty import CommandBuilder, DialBackHandler, SessionManager
    from agent.sdk.extensions import PTY_DIAL_PATH

    executable = sessionenv.wsagent_executable()

    def environment() -> Mapping[str, str]:
        md = agent.metadata
        if md is None:
            return os.environ
        return sessionenv.session_environment(md, agent.tokens.token, executable)

    def motd_text() -> str:
        md = agent.metadata
        return motd.read_motd(md.motd_file, paths.home_directory()) if md else ""

    def directory() -> str:
        md = agent.metadata
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
        stats=agent.stats,
        max_sessions=agent.config.pty_max_sessions,
        idle_timeout=agent.config.pty_idle_timeout,
        scrollback_bytes=agent.config.pty_scrollback_bytes,
        register_group=agent.children.add,
        unregister_group=agent.children.discard,
    )
    expose(manager.sessions)

    async def dial_back(session_id: str) -> ClientConnection:
        path = PTY_DIAL_PATH.removeprefix(API_PREFIX)
        url = agent.client.websocket_url(path, urlencode({"session": session_id}))
        return await dial(url, agent.client.websocket_headers(), agent.client.verify)

    return DialBackHandler(manager, dial_back, agent.stats).handle


def wire_streams(agent: Agent, metrics: AgentMetrics | None = None) -> None:
    """Byte streams (SSH, workspace TCP ports): dial back for each StreamRequest.

    agent.streams (and websockets) is imported on the first request; the SSH server's
    connector imports asyncssh only when the first SSH stream arrives."""
    from agent.coordinator import CoordinatorSession
    from agent.sdk.extensions import Extension, StreamRequest

    built: list[StreamHandler] = []
    if metrics is not None:
        metrics.add_gauge(
            "wsagent_agent_streams",
            "Open byte streams (SSH connections and forwarded TCP connections).",
            lambda: built[0].active if built else 0,
        )

    async def serve(request: Extension, session: CoordinatorSession) -> None:
        assert isinstance(request, StreamRequest)
        if not built:
            built.append(_stream_handler(agent))
        await built[0].handle(request, session.send_json)

    def close() -> None:
        if built:
            built[0].cancel_all()

    agent.handle_extension(StreamRequest, serve)
    agent.add_shutdown_hook(close)


def _stream_handler(agent: Agent) -> StreamHandler:
    from urllib.parse import urlencode

    from websockets.asyncio.client import ClientConnection

    from agent.client import API_PREFIX
    from agent.coordinator import dial
    from agent.sdk.extensions import STREAM_DIAL_PATH, TARGET_TCP, StreamRequest
    from agent.streams import Connection, StreamHandler, connect_loopback

    async def dial_back(session_id: str) -> ClientConnection:
        path = STREAM_DIAL_PATH.removeprefix(API_PREFIX)
        url = agent.client.websocket_url(path, urlencode({"session": session_id}))
        # A short receive queue: a stalled target holds at most a few messages here.
        return await dial(url, agent.client.websocket_headers(), agent.client.verify, max_queue=4)

    async def tcp(request: StreamRequest) -> Connection:
        return await connect_loopback(request.target.port)

    return StreamHandler(dial_back, {TARGET_TCP: tcp}, agent.stats)
