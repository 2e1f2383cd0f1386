"""``wsagent port-forward <workspace> --tcp [BIND:]LOCAL:REMOTE ...``

Listens on each LOCAL port (on 127.0.0.1 unless BIND says otherwise) and forwards every
accepted connection through its own byte stream to ``tcp:REMOTE`` on the workspace's
loopback. A connection the workspace refuses is closed with one line on stderr; the
forwarder goes on. Runs until interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from typing import Final

from wsagent.remote.api import AgentRef
from wsagent.remote.session import CliError, Credentials
from wsagent.remote.stream import CHUNK, open_stream, splice

PROG: Final = "wsagent port-forward"
MAX_CONNECTIONS: Final = 1024


@dataclass(frozen=True, slots=True)
class Forward:
    bind: str
    local: int
    remote: int

    @classmethod
    def parse(cls, text: str) -> Forward:
        """``LOCAL:REMOTE`` or ``BIND:LOCAL:REMOTE`` (BIND may be ``[v6]``)."""
        head, sep, remote = text.rpartition(":")
        bind, _, local = head.rpartition(":") if ":" in head else ("", "", head)
        if not sep or not local:
            raise CliError(f"--tcp {text!r}: expected [BIND:]LOCAL:REMOTE, e.g. 8080:80")
        return cls(bind.strip("[]") or "127.0.0.1", _port(local, text, 0), _port(remote, text, 1))


def _port(raw: str, spec: str, minimum: int) -> int:
    if not raw.isdigit() or not minimum <= int(raw) <= 65535:
        raise CliError(f"--tcp {spec!r}: {raw!r} is not a port {minimum}-65535")
    return int(raw)


class Forwarder:
    def __init__(self, credentials: Credentials, agent: AgentRef, forwards: list[Forward]) -> None:
        self._credentials = credentials
        self._agent = agent
        self._forwards = forwards
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        servers: list[asyncio.Server] = []
        try:
            for forward in self._forwards:
                servers.append(await self._listen(forward))
            await stop.wait()
        finally:
            for server in servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, forward: Forward) -> asyncio.Server:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await self._serve(forward, reader, writer)
            finally:
                self._tasks.discard(task)

        try:
            server = await asyncio.start_server(accepted, forward.bind, forward.local, limit=CHUNK)
        except OSError as exc:
            raise CliError(
                f"cannot listen on {forward.bind}:{forward.local}: {exc.strerror}"
            ) from exc
        port = server.sockets[0].getsockname()[1]
        print(
            f"Forwarding {forward.bind}:{port} to port {forward.remote} "
            f"in workspace {self._agent.host_name}",
            file=sys.stderr,
            flush=True,
        )
        return server

    async def _serve(
        self, forward: Forward, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        target = f"tcp:{forward.remote}"
        try:
            async with self._slots:
                try:
                    ws = await open_stream(self._credentials, self._agent.id, target)
                except CliError as exc:
                    print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
                    return
                try:
                    broke = await splice(ws, reader, writer)
                finally:
                    await ws.close()
                if broke:
                    print(f"{PROG}: {target}: {broke}", file=sys.stderr, flush=True)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def run(credentials: Credentials, agent: AgentRef, forwards: list[Forward]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await Forwarder(credentials, agent, forwards).run(stop)
    return 0
