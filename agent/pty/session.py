"""One reconnecting terminal session: a process on a PTY, its scrollback, its attachments.

Output path: the master fd is read non-blocking from ``loop.add_reader``. One callback reads
until the fd is empty or ``max_read`` bytes (64 KiB) are coalesced, appends them to the
scrollback and queues them, as one message, to every attachment. Then it returns to the
event loop, so a session running ``yes`` gets one turn per loop iteration like everything
else (other sessions, keystrokes, the coordinate socket).

Backpressure (docs/protocol.md "Limits"): each attachment sends from its own queue. When any
attachment has more than ``high_water`` bytes queued, the session stops reading the PTY; the
kernel buffer then fills and the program blocks in write(), exactly as on a slow local
terminal. Reading resumes once every attachment is below ``low_water``. An attachment whose
single send stays blocked longer than the stall timeout is disconnected by its connection
handler (it can re-attach and gets the scrollback), so one hopeless reader pauses its
session for at most that long and never makes anything buffer without bound.

End: when the PTY reports EOF (every holder of the slave side closed), or shortly after the
process exited when a background job still holds the slave, the session reads what is left,
waits for the exit status and closes every attachment *after* its queue is sent, with the
exit code in the close reason (Coder closed first and lost the tail of the output).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from agent.clock import Clock
from agent.pty.process import PtyChild
from agent.pty.ringbuffer import RingBuffer

log = structlog.get_logger()

PROTO: Final = "reconnecting_pty"
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013


class TrafficSink(Protocol):
    """What the session reports to (agent.stats.StatsCollector satisfies it)."""

    def session_opened(self, session_id: str, proto: str) -> None: ...
    def session_closed(self, session_id: str) -> None: ...
    def record_rx(self, nbytes: int, messages: int = 1) -> None: ...
    def record_tx(self, nbytes: int, messages: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class EndReason:
    """How an attachment's WebSocket should be closed."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class FlowLimits:
    max_read: int = 64 * 1024
    high_water: int = 256 * 1024
    low_water: int = 64 * 1024
    # Input not yet accepted by the PTY (the program is not reading its terminal).
    input_high_water: int = 256 * 1024
    # After the process exited, how long to wait for the PTY's EOF (a background job may
    # hold the terminal open forever).
    exit_grace: float = 0.5
    # How long the process may take to exit after SIGHUP/SIGTERM before SIGKILL.
    kill_grace: float = 3.0


DEFAULT_LIMITS: Final = FlowLimits()


class Attachment:
    """One connection's view of a session: a queue of output messages and an end."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._inflight = 0
        self._wake = asyncio.Event()
        self._end: EndReason | None = None
        self._on_progress: Callable[[Attachment], None] = lambda _: None
        self._on_sent: Callable[[int], None] = lambda _: None

    @property
    def pending(self) -> int:
        return self._queued + self._inflight

    @property
    def end(self) -> EndReason | None:
        return self._end

    def push(self, chunk: bytes) -> None:
        if self._end is not None:
            return
        self._queue.append(chunk)
        self._queued += len(chunk)
        self._wake.set()

    def finish(self, reason: EndReason) -> None:
        """Close after what is queued has been sent."""
        if self._end is None:
            self._end = reason
            self._wake.set()

    async def run(self, send: Callable[[bytes], Awaitable[None]]) -> EndReason:
        """Send queued output until the session finishes this attachment."""
        while True:
            while self._queue:
                chunk = self._queue.popleft()
                self._queued -= len(chunk)
                self._inflight = len(chunk)
                await send(chunk)
                self._inflight = 0
                self._on_sent(len(chunk))
                self._on_progress(self)
            if self._end is not None:
                return self._end
            self._wake.clear()
            await self._wake.wait()


class PtySession:
    def __init__(
        self,
        session_id: str,
        child: PtyChild,
        *,
        scrollback_bytes: int,
        idle_timeout: float,
        stats: TrafficSink,
        on_end: Callable[[PtySession], None],
        clock: Clock,
        limits: FlowLimits = DEFAULT_LIMITS,
        banner: bytes = b"",
    ) -> None:
        self.id = session_id
        self.child = child
        self.limits = limits
        self.exit_code: int | None = None
        self._loop = asyncio.get_running_loop()
        self._ring = RingBuffer(scrollback_bytes)
        self._idle_timeout = idle_timeout
        self._stats = stats
        self._on_end = on_end
        self._attachments: dict[str, Attachment] = {}
        self._reading = False
        self._paused = False
        self._ending = False
        self._end_reason: EndReason | None = None
        self._eof = asyncio.Event()
        self._ended = asyncio.Event()
        self._clock = clock
        self._idle: asyncio.Task[None] | None = None
        self._inbuf = bytearray()
        self._writing = False
        self._input_room = asyncio.Event()
        self._input_room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        if banner:
            self._ring.write(banner)
        self._start_reading()
        self._spawn(self._watch_exit())
        self._arm_idle()

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------- attachments

    @property
    def ending(self) -> bool:
        return self._ending

    @property
    def attachments(self) -> int:
        return len(self._attachments)

    @property
    def paused(self) -> bool:
        return self._paused

    def attach(self, conn: Attachment, rows: int, cols: int) -> None:
        """Replay the scrollback to ``conn`` and register it for new output."""
        if rows and cols:
            self.child.resize(rows, cols)
        conn._on_progress = self._on_progress
        conn._on_sent = self._stats_tx
        snapshot = self._ring.snapshot()
        step = self.limits.max_read
        for i in range(0, len(snapshot), step):
            conn.push(snapshot[i : i + step])
        if self._end_reason is not None:
            conn.finish(self._end_reason)
            return
        self._attachments[conn.conn_id] = conn
        self._stats.session_opened(conn.conn_id, PROTO)
        self._cancel_idle()
        log.info("pty.attached", pty_id=self.id, conn=conn.conn_id, replay=len(snapshot))

    def detach(self, conn: Attachment) -> None:
        if self._attachments.pop(conn.conn_id, None) is None:
            return
        self._stats.session_closed(conn.conn_id)
        log.info("pty.detached", pty_id=self.id, conn=conn.conn_id)
        self._maybe_resume()
        if not self._attachments:
            self._arm_idle()

    def _stats_tx(self, nbytes: int) -> None:
        self._stats.record_tx(nbytes, 1)

    # ----------------------------------------------------------------- idle timeout

    def _arm_idle(self) -> None:
        self._cancel_idle()
        if self._ending:
            return
        self._idle = asyncio.create_task(self._idle_after(self._idle_timeout))

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    async def _idle_after(self, seconds: float) -> None:
        await self._clock.sleep(seconds)
        self._on_idle()

    def _on_idle(self) -> None:
        self._idle = None
        if self._attachments or self._ending:
            return
        log.info("pty.idle_timeout", pty_id=self.id, seconds=self._idle_timeout)
        self._spawn(self.close())

    async def close(self) -> None:
        """Stop the process (HUP, TERM, then KILL after a grace) and end the session."""
        if not self.child.exited:
            await self.child.terminate(self.limits.kill_grace)
        await self._ended.wait()

    async def wait_ended(self) -> int | None:
        await self._ended.wait()
        return self.exit_code

    # ----------------------------------------------------------------- output

    def _start_reading(self) -> None:
        if not self._reading and not self._ending and self.child.fd >= 0:
            self._loop.add_reader(self.child.fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        # Only the session closes the fd, and only after this, so child.fd is still valid.
        if self._reading:
            self._loop.remove_reader(self.child.fd)
            self._reading = False

    def _read_available(self, limit: int) -> tuple[bytes, bool]:
        """Read what the PTY holds, up to ``limit`` bytes. Returns (data, eof)."""
        chunks: list[bytes] = []
        total = 0
        eof = False
        while total < limit:
            try:
                data = os.read(self.child.fd, limit - total)
            except BlockingIOError:
                break
            except OSError:  # EIO: every holder of the slave side has closed it
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            total += len(data)
        return b"".join(chunks), eof

    def _on_readable(self) -> None:
        data, eof = self._read_available(self.limits.max_read)
        if data:
            self._emit(data)
        if eof:
            self._eof.set()
            self._begin_end()

    def _emit(self, data: bytes) -> None:
        self._ring.write(data)
        over = False
        for conn in self._attachments.values():
            conn.push(data)
            over = over or conn.pending > self.limits.high_water
        if over and not self._paused:
            self._paused = True
            self._stop_reading()
            log.debug("pty.paused", pty_id=self.id)

    def _on_progress(self, conn: Attachment) -> None:
        if self._paused and conn.pending <= self.limits.low_water:
            self._maybe_resume()

    def _maybe_resume(self) -> None:
        if not self._paused:
            return
        if any(c.pending > self.limits.low_water for c in self._attachments.values()):
            return
        self._paused = False
        self._start_reading()
        log.debug("pty.resumed", pty_id=self.id)

    # ----------------------------------------------------------------- input

    async def write(self, data: bytes) -> None:
        """Queue keystrokes for the PTY; waits while the program is not reading input."""
        if self._ending or self.child.fd < 0 or not data:
            return
        self._inbuf += data
        self._flush_input()
        while len(self._inbuf) > self.limits.input_high_water and not self._ending:
            self._input_room.clear()
            await self._input_room.wait()

    def _flush_input(self) -> None:
        fd = self.child.fd
        while self._inbuf and fd >= 0:
            try:
                n = os.write(fd, self._inbuf)
            except BlockingIOError:
                break
            except OSError:
                self._inbuf.clear()
                break
            del self._inbuf[:n]
        if self._inbuf and fd >= 0:
            if not self._writing:
                self._loop.add_writer(fd, self._flush_input)
                self._writing = True
        else:
            self._stop_writing()
        if len(self._inbuf) <= self.limits.input_high_water:
            self._input_room.set()

    def _stop_writing(self) -> None:
        if self._writing:
            self._loop.remove_writer(self.child.fd)
            self._writing = False

    def resize(self, rows: int, cols: int) -> None:
        if rows and cols and not self._ending:
            self.child.resize(rows, cols)

    # ----------------------------------------------------------------- end

    async def _watch_exit(self) -> None:
        await self.child.wait()
        if not self._ending:
            # Give the reader the chance to see EOF with every byte before it; a background
            # job holding the terminal open must not keep the session alive.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._eof.wait(), self.limits.exit_grace)
        self._begin_end()

    def _begin_end(self) -> None:
        if self._ending:
            return
        self._ending = True
        self._cancel_idle()
        self._stop_reading()
        self._stop_writing()
        if not self._eof.is_set() and self.child.fd >= 0:
            # The process has exited: what is left in the PTY is bounded, read it all
            # regardless of backpressure so no attachment misses the tail.
            data, _ = self._read_available(4 << 20)
            if data:
                self._emit(data)
        self.child.close_fd()
        self._inbuf.clear()
        self._input_room.set()
        self._spawn(self._finish())

    async def _finish(self) -> None:
        try:
            code = await asyncio.wait_for(self.child.wait(), self.limits.kill_grace)
        except TimeoutError:
            # EOF without exit: the program closed its terminal but lives on.
            code = await self.child.terminate(self.limits.kill_grace)
        # Background jobs of a login shell get the hangup a closing terminal would send.
        self.child.signal_group(signal.SIGHUP)
        self.exit_code = code
        self._end_reason = EndReason(CLOSE_NORMAL, f"process exited with code {code}")
        log.info("pty.session_ended", pty_id=self.id, exit_code=code)
        for conn in list(self._attachments.values()):
            conn.finish(self._end_reason)
            self._attachments.pop(conn.conn_id, None)
            self._stats.session_closed(conn.conn_id)
        self._ring.clear()
        self._on_end(self)
        self._ended.set()
