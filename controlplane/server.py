"""Build and run the control plane's aiohttp application.

aiohttp serves HTTP and WebSocket from one well-kept package with flow control on both
directions of a socket, which the terminal relay needs; see docs/operations.md.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from aiohttp import web

from controlplane import (
    dialback,
    gitauth_web,
    hostkeys,
    metadata_routes,
    metrics,
    ports,
    ptyrelay,
    routes_agent,
    routes_identity,
    routes_user,
    startuplogs,
    streams,
)
from controlplane.appkeys import CONFIG, COORDINATOR, GITAUTH, STORE
from controlplane.config import ServerConfig
from controlplane.connguard import (
    GUARD,
    ConnectionGuard,
    GuardedSockSite,
    GuardLimits,
    accepts_per_turn,
    cap_for,
    guard_middleware,
    raise_open_file_limit,
)
from controlplane.coordinator import Coordinator
from controlplane.gitauth import GitAuthNotifier
from controlplane.httpapi import error_middleware, respond
from controlplane.store.base import Store
from controlplane.store.open import open_store
from controlplane.webui import dashboard, login, proxy, sockets, static, terminal_page
from controlplane.webui.pages import page_middleware
from controlplane.webui.security import add_security_headers

log = structlog.get_logger()


async def healthz(request: web.Request) -> web.Response:
    return respond({"status": "ok"})


async def build_info(request: web.Request) -> web.Response:
    from wscommon import __version__

    return respond(
        {"version": f"v{__version__}", "external_url": "https://github.com/wsagent/wsagent"}
    )


def create_app(config: ServerConfig, store: Store) -> web.Application:
    app = web.Application(
        middlewares=[guard_middleware, error_middleware, page_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[GUARD] = ConnectionGuard(
        GuardLimits(config.head_timeout, config.idle_timeout, config.max_unauthenticated)
    )
    app[CONFIG] = config
    app[STORE] = store
    app[COORDINATOR] = Coordinator()
    app[GITAUTH] = GitAuthNotifier()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/v2/buildinfo", build_info)
    for setup in (
        routes_agent.setup,
        routes_user.setup,
        routes_identity.setup,
        dialback.setup,
        ptyrelay.setup,
        streams.setup,
        hostkeys.setup,
        ports.setup,
        gitauth_web.setup,
        startuplogs.setup,
        metadata_routes.setup,
        sockets.setup,
        login.setup,
        static.setup,
        dashboard.setup,
        terminal_page.setup,
        proxy.setup,
    ):
        setup(app)
    metrics.setup(app)
    app.on_response_prepare.append(add_security_headers)

    async def close_sockets(app: web.Application) -> None:
        await app[COORDINATOR].close()

    async def close_bus(app: web.Application) -> None:
        bus, app[COORDINATOR].bus = app[COORDINATOR].bus, None
        if bus is not None:
            await bus.close()

    app.on_shutdown.append(close_sockets)
    app.on_cleanup.append(close_bus)
    return app


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key or config.tls_cert))
    return context


@dataclass
class RunningServer:
    app: web.Application
    runner: web.AppRunner
    store: Store
    config: ServerConfig
    port: int
    metrics_runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return self.config.resolved_access_url()

    async def stop(self) -> None:
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.runner.cleanup()
        await self.store.close()


async def start_server(config: ServerConfig, store: Store | None = None) -> RunningServer:
    """Open the store, bind the socket, serve. ``port=0`` picks a free port."""
    if store is None:
        store = await open_store(
            config.data_dir,
            config.database_url,
            durability=config.durability,
            pool_size=config.database_pool_size,
        )
    app = create_app(config, store)
    fd_limit = raise_open_file_limit()
    guard = app[GUARD]
    guard.cap = cap_for(config.max_unauthenticated, fd_limit)
    # aiohttp's own keep-alive timer is only a backstop behind the guard's.
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=2.0,
        keepalive_timeout=config.idle_timeout + config.head_timeout,
    )
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        # A busy port is the commonest start-up failure: name the address, tidy up.
        sock.close()
        await runner.cleanup()
        await store.close()
        raise OSError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    port = sock.getsockname()[1]
    site = GuardedSockSite(
        runner, sock, guard, ssl_context=tls_context(config), accepts=accepts_per_turn(fd_limit)
    )
    await site.start()
    if not config.access_url:
        config.access_url = config.resolved_access_url(port)
    log.info(
        "server.listening",
        url=config.access_url,
        address=f"{config.host}:{port}",
        data_dir=str(config.data_dir),
        fd_limit=fd_limit,
        max_unauthenticated=guard.cap,
    )
    if config.database_url:
        await start_bus(app, config, port)
    metrics_runner = None
    if config.metrics_address is not None:
        metrics_runner = await metrics.start_endpoint(app, *config.metrics_address)
    return RunningServer(app, runner, store, config, port, metrics_runner)


async def start_bus(app: web.Application, config: ServerConfig, port: int) -> None:
    """Several replicas share the PostgreSQL database: link their coordinators."""
    from controlplane.pgbus import PgBus

    config.replica_id = config.resolved_replica_id(port)
    bus = PgBus(
        config.database_url,
        config.replica_id,
        app[COORDINATOR],
        app[GITAUTH],
        stale_after=config.inactive_timeout,
        logs_appended=app[startuplogs.NOTIFIER].publish,
        auth_cache=app[STORE].auth_cache,
    )
    await bus.start()
    app[COORDINATOR].bus = bus
    log.info("server.replica", replica_id=config.replica_id, replica_url=config.replica_url)
    if not config.replica_url:
        # Dial-backs then go to the access URL: behind a load balancer they may land on a
        # replica other than the one whose user asked, and that terminal fails.
        log.warning(
            "server.replica_url_missing",
            hint="give every replica --replica-url, its own address, when several share"
            " the database",
        )


@contextlib.asynccontextmanager
async def running(config: ServerConfig) -> AsyncIterator[RunningServer]:
    server = await start_server(config)
    try:
        yield server
    finally:
        await server.stop()
