"""Test helpers for terminals: a loopback stand-in for the server end of dial-back sockets.

``DialBackServer`` plays only the control plane's half of the dial-back protocol (accept,
send the init, send input, read output), so the agent's session code can be driven over a
real WebSocket on 127.0.0.1 without the whole control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from agent.clock import SYSTEM_CLOCK, Clock
from agent.pty import CommandBuilder, DialBackHandler, FlowLimits, LaunchSpec, SessionManager
from agent.sdk.extensions import PTYRequest
from agent.sdk.pty import ReconnectingPTYInit, ReconnectingPTYRequest

SH_ENV = {"PATH": "/usr/bin:/bin", "PS1": "$ ", "HOME": "/tmp", "LANG": "C"}


@dataclass
class Recorder:
    """A TrafficSink that remembers everything (agent.stats is tested on its own)."""

    opened: list[tuple[str, str]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    rx: list[int] = field(default_factory=list)
    tx: list[int] = field(default_factory=list)

    def session_opened(self, session_id: str, proto: str) -> None:
        self.opened.append((session_id, proto))

    def session_closed(self, session_id: str) -> None:
        self.closed.append(session_id)

    def record_rx(self, nbytes: int, messages: int = 1) -> None:
        self.rx.append(nbytes)

    def record_tx(self, nbytes: int, messages: int = 1) -> None:
        self.tx.append(nbytes)


class Screen:
    """One end of a reconnecting-PTY stream: type input, read output until a pattern."""

    def __init__(self, ws: ServerConnection | ClientConnection) -> None:
        self.ws = ws
        self.output = bytearray()

    async def type(self, data: str = "", rows: int = 0, cols: int = 0) -> None:
        await self.ws.send(ReconnectingPTYRequest(data, rows, cols).encode())

    async def expect(self, pattern: bytes, timeout: float = 10.0) -> re.Match[bytes]:
        """Read output until ``pattern`` (a regex) matches what was received so far."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while (m := rx.search(self.output)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen; got {bytes(self.output[-500:])!r}")
            try:
                message = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                continue
            self.output += message if isinstance(message, bytes) else message.encode()
        return m

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the other side closes; returns (code, reason)."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionClosed):
                async for message in self.ws:
                    self.output += message if isinstance(message, bytes) else message.encode()
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "")


class Term(Screen):
    """The server's end of a dial-back socket: it also sends the init frame."""

    async def start(self, pty_id: str, command: str = "", rows: int = 24, cols: int = 80) -> None:
        await self.ws.send(ReconnectingPTYInit(pty_id, rows, cols, command).encode_frame())


class DialBackServer:
    def __init__(self) -> None:
        self._accepted: asyncio.Queue[tuple[str, ServerConnection]] = asyncio.Queue()
        self._server: Server | None = None
        self.port = 0

    async def _handler(self, ws: ServerConnection) -> None:
        await self._accepted.put((ws.request.path if ws.request else "", ws))
        await ws.wait_closed()

    async def __aenter__(self) -> DialBackServer:
        self._server = await serve(self._handler, "127.0.0.1", 0, compression=None, close_timeout=1)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def dial(self, session_id: str, url: str = "") -> ClientConnection:
        return await connect(
            f"ws://127.0.0.1:{self.port}/pty-dial?session={session_id}",
            compression=None,
            write_limit=64 * 1024,
            max_size=1 << 20,
            close_timeout=1,
        )

    async def accept(self, timeout: float = 5.0) -> tuple[str, Term]:
        path, ws = await asyncio.wait_for(self._accepted.get(), timeout)
        return path, Term(ws)


class Agentish:
    """A SessionManager + DialBackHandler wired to a DialBackServer, as the agent wires them."""

    def __init__(
        self,
        server: DialBackServer,
        *,
        launch: LaunchSpec | None = None,
        max_sessions: int = 64,
        idle_timeout: float = 300.0,
        limits: FlowLimits | None = None,
        stall_timeout: float = 30.0,
        builder: CommandBuilder | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.stats = Recorder()
        self.groups: dict[int, str] = {}
        if builder is None:
            builder = CommandBuilder(
                environment=lambda: SH_ENV, shell=lambda: "/bin/sh", home=lambda: "/tmp"
            )
        self.manager = SessionManager(
            launch=builder.build,
            stats=self.stats,
            clock=clock,
            max_sessions=max_sessions,
            idle_timeout=idle_timeout,
            limits=limits or FlowLimits(),
            register_group=self.groups.__setitem__,
            unregister_group=self._forget_group,
        )
        self.handler = DialBackHandler(
            self.manager, server.dial, self.stats, stall_timeout=stall_timeout
        )
        self.server = server
        self._tasks: set[asyncio.Task[None]] = set()

    def _forget_group(self, pgid: int) -> None:
        self.groups.pop(pgid, None)

    async def open(self, pty_id: str, command: str = "", rows: int = 24, cols: int = 80) -> Term:
        task = asyncio.create_task(self.handler.handle(PTYRequest(f"s-{pty_id}")))
        self._tasks.add(task)
        _, term = await self.server.accept()
        await term.start(pty_id, command, rows, cols)
        return term

    async def aclose(self) -> None:
        await self.manager.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def agentish(**kwargs: object) -> AsyncIterator[Agentish]:
    async with DialBackServer() as server:
        agent = Agentish(server, **kwargs)  # type: ignore[arg-type]
        try:
            yield agent
        finally:
            await agent.aclose()
