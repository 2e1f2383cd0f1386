"""The parts of the composition root that import their component on first use, so an
idle agent does not pay for them: app health (on the first metadata with a health
check), the listening-ports scanner, terminals and byte streams (on the first request;
they bring websockets and the PTY code), and the metrics endpoint (only when configured).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Final

from agent import lifecycle, paths, sessionenv
from agent.children import ChildRegistry
from agent.client import API_PREFIX, ControlPlaneClient, TokenHolder
from agent.clock import Clock
from agent.config import AgentConfig
from agent.connection import CONNECTION_STATES, STATE_CONNECTED, ConnectionLoop
from agent.coordinator import CoordinatorSession, dial
from agent.sdk.extensions import (
    PTY_DIAL_PATH,
    STREAM_DIAL_PATH,
    TARGET_SSH,
    TARGET_TCP,
    Extension,
    ListeningPortsRequest,
    ListeningPortsResponse,
    PTYRequest,
    StreamRequest,
)
from agent.sdk.models import Metadata
from agent.startup import WorkspaceStart
from agent.stats import StatsCollector
from agent.supervisor import Supervisor

# Per stream, what the agent may have written to a dial-back socket but not yet sent.
STREAM_SEND_BUFFER: Final = 1 << 20

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from agent.agentmetadata import MetadataCollector
    from agent.apphealth import AppHealthReporter
    from agent.metrics import AgentMetrics
    from agent.ports import PortScanner
    from agent.sdk.promtext import Family
    from agent.startuplogs import StartupLogSender
    from agent.streams import Connector, StreamHandler


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
        if self.reporter is None and not metadata.apps:
            return  # no app, nothing to probe: agent.apphealth stays unimported
        from agent.apphealth import AppHealthReporter, probed_apps

        if self.reporter is not None:
            self.reporter.update(metadata.apps)
            self.reporter.resend()
        elif probed_apps(metadata.apps):
            self.reporter = AppHealthReporter(metadata.apps, self._post, clock=self._clock)
            self._supervisor.start("apphealth", self.reporter.run)

    def healths(self) -> dict[str, str]:
        return dict(self.reporter.healths) if self.reporter is not None else {}


class Terminals:
    """Reconnecting terminals: dial back to the control plane for each PTYRequest.

    agent.pty (and with it websockets) is imported on the first request, so
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
        from agent.pty.process import PtyChild, spawn

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

        children = self._children

        def launch_pty(
            argv: Sequence[str], env: Mapping[str, str], cwd: str | None, rows: int, cols: int
        ) -> PtyChild:
            return spawn(children.launch_argv(argv), env, cwd, rows, cols)

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
            spawner=launch_pty,
        )
        self.sessions = manager.sessions
        client = self._client

        async def dial_back(session_id: str, base_url: str) -> ClientConnection:
            path = PTY_DIAL_PATH.removeprefix(API_PREFIX)
            url = client.dial_back_url(base_url, path, urlencode({"session": session_id}))
            return await dial(url, client.websocket_headers(), client.verify)

        return DialBackHandler(manager, dial_back, self._traffic).handle


class ListeningPorts:
    """Answers the server's listening-ports requests. The scanner (agent.ports) is made
    on the first request. The agent's own metrics port is not the workspace's to forward
    (Coder hides its own)."""

    def __init__(self, clock: Clock, own_port: int) -> None:
        self._clock = clock
        self._own_port = own_port
        self.scanner: PortScanner | None = None

    async def serve(self, request: Extension, session: CoordinatorSession) -> None:
        from agent.sdk.workspaceagents import ListeningPort

        assert isinstance(request, ListeningPortsRequest)
        from agent.ports import PortScanner, reportable

        if self.scanner is None:
            self.scanner = PortScanner(clock=self._clock.monotonic)
        try:
            ports = await asyncio.to_thread(self.scanner.scan)
        except OSError as exc:
            reply = ListeningPortsResponse(request.request_id, error=f"scan failed: {exc}")
        else:
            found = tuple(
                ListeningPort(p.process_name, p.network, p.port)
                for p in reportable(ports, self._own_port)
            )
            reply = ListeningPortsResponse(request.request_id, found)
        await session.send_json(reply.to_json())

    def close(self) -> None:
        if self.scanner is not None:
            self.scanner.close()


class Streams:
    """Byte streams (SSH, workspace TCP ports): dial back for each StreamRequest.

    agent.streams (and websockets) is imported on the first request; the SSH server's
    connector imports asyncssh only when the first SSH stream arrives."""

    def __init__(
        self, client: ControlPlaneClient, traffic: StatsCollector, ssh: Connector | None = None
    ) -> None:
        self._client = client
        self._traffic = traffic
        self._ssh = ssh  # the SSH server's connector; None leaves the ssh target off
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

        async def dial_back(session_id: str, base_url: str) -> ClientConnection:
            path = STREAM_DIAL_PATH.removeprefix(API_PREFIX)
            url = client.dial_back_url(base_url, path, urlencode({"session": session_id}))
            # A short receive queue: a stalled target holds at most a few messages here.
            # A send waits only above SEND_BUFFER, so reading the target and sending
            # overlap instead of taking turns (a 256 KiB message over a 64 KiB limit would
            # wait for the socket to drain after every message).
            return await dial(
                url,
                client.websocket_headers(),
                client.verify,
                max_queue=4,
                write_limit=STREAM_SEND_BUFFER,
            )

        async def tcp(request: StreamRequest) -> Connection:
            return await connect_loopback(request.target.port)

        connectors: dict[str, Connector] = {TARGET_TCP: tcp}
        if self._ssh is not None:
            connectors[TARGET_SSH] = self._ssh
        return StreamHandler(dial_back, connectors, self._traffic)


def build_metrics(
    connection: ConnectionLoop,
    traffic: StatsCollector,
    workspace_start: WorkspaceStart,
    app_health: AppHealth,
    terminals: Terminals,
    streams: Streams,
    startup_logs: StartupLogSender | None = None,
    agent_metadata: MetadataCollector | None = None,
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
    if startup_logs is not None:
        queue = startup_logs.queue

        def startup_log_families() -> list[Family]:
            lines = (
                ((("result", "sent"),), queue.sent_lines),
                (
                    (("result", "dropped"),),
                    queue.dropped_lines,
                ),
            )
            return [
                Family(
                    "wsagent_agent_startup_log_lines_total",
                    COUNTER,
                    "Startup script lines streamed to the control plane, or dropped past its"
                    " 1 MiB cap.",
                    [("", labels, value) for labels, value in lines],
                )
            ]

        metrics.add(startup_log_families)
    if agent_metadata is not None:
        collector = agent_metadata
        metrics.add(
            lambda: [
                Family(
                    "wsagent_agent_metadata_runs_total",
                    COUNTER,
                    "Agent metadata commands run.",
                    [("", (), collector.runs)],
                )
            ]
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
