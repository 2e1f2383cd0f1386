"""Non-blocking pumps between a child's file descriptors and an SSH channel.

A :class:`FdReader` reads a pipe or a PTY master from the event loop's readiness callback
(at most ``CHUNK`` per turn, so one busy session cannot starve the loop) and hands the
bytes on; the channel pauses it when the client is not keeping up. A :class:`FdWriter`
writes what the client sends, keeping at most ``high_water`` unwritten bytes before it
asks the channel to stop reading. Nothing here buffers without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Final

CHUNK: Final = 64 * 1024
HIGH_WATER: Final = 256 * 1024


class FdReader:
    """Reads ``fd`` until end-of-file (or EIO: a PTY whose last slave closed)."""

    def __init__(self, fd: int, sink: Callable[[bytes], None]) -> None:
        self.fd = fd
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._paused = False
        self.eof = asyncio.Event()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO from a PTY master: every slave descriptor is closed
        if not data:
            self.close()
            return
        self._sink(data)

    def pause(self) -> None:
        if not self._paused and not self.eof.is_set():
            self._paused = True
            self._loop.remove_reader(self.fd)

    def resume(self) -> None:
        if self._paused and not self.eof.is_set():
            self._paused = False
            self._loop.add_reader(self.fd, self._readable)

    def drain_now(self) -> None:
        """Read whatever is buffered right now (after the child exited), then stop."""
        while not self.eof.is_set():
            try:
                data = os.read(self.fd, CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self._sink(data)

    def close(self, *, close_fd: bool = True) -> None:
        if not self.eof.is_set():
            self.eof.set()
            if not self._paused:
                self._loop.remove_reader(self.fd)
            if close_fd:
                with contextlib.suppress(OSError):
                    os.close(self.fd)


class FdWriter:
    """Writes to ``fd`` without blocking; ``on_full``/``on_drained`` throttle the source."""

    def __init__(
        self,
        fd: int,
        on_full: Callable[[], None],
        on_drained: Callable[[], None],
        *,
        high_water: int = HIGH_WATER,
        close_fd: bool = True,
    ) -> None:
        self.fd = fd
        self._on_full = on_full
        self._on_drained = on_drained
        self._high_water = high_water
        self._close_fd = close_fd
        self._buffer = bytearray()
        self._loop = asyncio.get_running_loop()
        self._full = False
        self._eof_pending = False
        self.closed = False
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        if self.closed or self._eof_pending:
            return
        if not self._buffer:
            written = self._try_write(data)
            data = data[written:]
            if not data:
                return
            self._loop.add_writer(self.fd, self._writable)
        self._buffer += data
        if not self._full and len(self._buffer) > self._high_water:
            self._full = True
            self._on_full()

    def _try_write(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self._fail()
            return len(data)

    def _writable(self) -> None:
        written = self._try_write(self._buffer)
        del self._buffer[:written]
        if self._buffer or self.closed:
            return
        self._loop.remove_writer(self.fd)
        if self._full:
            self._full = False
            self._on_drained()  # may deliver more input (and the end-of-file) right here
        if self._eof_pending and not self._buffer:
            self.close()

    def _fail(self) -> None:
        # The child closed its end: drop what is left, and let the client go on sending
        # (its bytes are discarded, as a closed pipe discards them).
        self._buffer.clear()
        if self._full:
            self._full = False
            self._on_drained()
        self.close()

    def write_eof(self) -> None:
        """Close once everything buffered is written (the child then reads end-of-file)."""
        if self._buffer:
            self._eof_pending = True
        else:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer.clear()
        with contextlib.suppress(ValueError, RuntimeError):
            self._loop.remove_writer(self.fd)
        if self._close_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)
