"""Serve one PTYRequest: dial back to the control plane and pump one attachment.

The server asked over the coordinate socket (docs/design.md, "Outbound-only agent, and one
data plane"). We open a new WebSocket to ``PTY_DIAL_PATH?session=<id>`` with the agent
token, read the init frame, attach to the session it names (starting it if new), then run
two loops until either ends: input (server → PTY) and output (attachment queue → server).
One TCP connection per attachment gives each its own flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Final

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from agent.errors import DecodeError, PtyError
from agent.pty.manager import SessionLimitError, SessionManager
from agent.pty.protocol import DialBackDecoder, input_bytes
from agent.pty.session import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    Attachment,
    EndReason,
    PtySession,
    TrafficSink,
)
from agent.sdk.dialback import STALL_TIMEOUT, truncate_reason
from agent.sdk.extensions import PTYRequest
from agent.sdk.pty import ReconnectingPTYRequest

log = structlog.get_logger()

INIT_TIMEOUT: Final = 10.0
CLOSE_INVALID_DATA: Final = 1007

Dialer = Callable[[str, str], Awaitable[ClientConnection]]


class DialBackHandler:
    def __init__(
        self,
        manager: SessionManager,
        dial: Dialer,
        stats: TrafficSink,
        *,
        init_timeout: float = INIT_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self._manager = manager
        self._dial = dial
        self._stats = stats
        self._init_timeout = init_timeout
        self._stall_timeout = stall_timeout
        self._ids = itertools.count(1)

    async def handle(self, request: PTYRequest) -> None:
        """Dial back for ``request`` and serve the attachment until it ends."""
        ws = await self._dial(request.session_id, request.url)
        try:
            await self._serve(ws)
        finally:
            # websockets bounds the closing handshake with its close_timeout.
            with contextlib.suppress(Exception):
                await ws.close()

    async def _serve(self, ws: ClientConnection) -> None:
        decoder = DialBackDecoder()
        try:
            first = await asyncio.wait_for(self._read_init(ws, decoder), self._init_timeout)
        except TimeoutError:
            await self._close(ws, EndReason(CLOSE_POLICY, "no reconnecting-pty init received"))
            return
        except DecodeError as exc:
            await self._close(ws, EndReason(CLOSE_INVALID_DATA, f"invalid init: {exc.reason}"))
            return
        except ConnectionClosed:
            return
        init = decoder.init
        assert init is not None
        conn = Attachment(f"{init.id}#{next(self._ids)}")
        try:
            session = self._manager.attach(init, conn)
        except SessionLimitError as exc:
            await self._close(ws, EndReason(CLOSE_TRY_AGAIN_LATER, str(exc)))
            return
        except PtyError as exc:
            log.warning("pty.start_failed", pty_id=init.id, error=str(exc))
            await self._close(ws, EndReason(CLOSE_INTERNAL, str(exc)))
            return
        # No bound_contextvars here: the session's reader callbacks are (re)registered from
        # this task and would carry one attachment's fields into every later session log.
        await self._pump(ws, decoder, session, conn, first)

    async def _read_init(
        self, ws: ClientConnection, decoder: DialBackDecoder
    ) -> list[ReconnectingPTYRequest]:
        requests: list[ReconnectingPTYRequest] = []
        while decoder.init is None:
            message = await ws.recv()
            data = message.encode() if isinstance(message, str) else message
            requests = decoder.feed(data)
        return requests

    async def _pump(
        self,
        ws: ClientConnection,
        decoder: DialBackDecoder,
        session: PtySession,
        conn: Attachment,
        first: list[ReconnectingPTYRequest],
    ) -> None:
        async def send(chunk: bytes) -> None:
            # asyncio.timeout, not wait_for: no extra task for every message sent.
            async with asyncio.timeout(self._stall_timeout):
                await ws.send(chunk)

        sender = asyncio.create_task(conn.run(send))
        receiver = asyncio.create_task(self._receive(ws, decoder, session, first))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            session.detach(conn)
            for task in (sender, receiver):
                task.cancel()
            results = await asyncio.gather(sender, receiver, return_exceptions=True)
        end, failure = results
        if isinstance(end, EndReason):
            await self._close(ws, end)
        elif isinstance(end, TimeoutError):
            log.warning(
                "pty.reader_stalled",
                pty_id=session.id,
                conn=conn.conn_id,
                seconds=self._stall_timeout,
            )
            reason = f"terminal output was not read for {self._stall_timeout:g}s; reconnect"
            await self._close(ws, EndReason(CLOSE_POLICY, reason))
        elif isinstance(failure, DecodeError):
            await self._close(ws, EndReason(CLOSE_INVALID_DATA, f"invalid input: {failure}"))

    async def _receive(
        self,
        ws: ClientConnection,
        decoder: DialBackDecoder,
        session: PtySession,
        first: list[ReconnectingPTYRequest],
    ) -> None:
        await self._apply(session, first)
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                data = message.encode() if isinstance(message, str) else message
                self._stats.record_rx(len(data), 1)
                await self._apply(session, decoder.feed(data))

    @staticmethod
    async def _apply(session: PtySession, requests: list[ReconnectingPTYRequest]) -> None:
        for request in requests:
            data = input_bytes(request)
            if data:
                await session.write(data)
            size = request.resize
            if size is not None:
                session.resize(*size)

    @staticmethod
    async def _close(ws: ClientConnection, end: EndReason) -> None:
        with contextlib.suppress(Exception):
            await ws.close(end.code, truncate_reason(end.reason))
