"""Bounded terminal scrollback, replayed to every (re)attaching client.

Pure: no I/O, no clock. The buffer keeps the newest ``capacity`` bytes. Trimming may cut
a UTF-8 sequence or an escape sequence in half at the very start of the replay; terminals
recover from that after a few bytes, as they do with Coder's 64 KiB buffer.
"""

from __future__ import annotations


class RingBuffer:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("ring buffer capacity must be positive")
        self.capacity = capacity
        # Grows by appending until it holds ``capacity`` bytes (a quiet session never
        # allocates the whole capacity), then wraps: new bytes overwrite the oldest in
        # place from ``_start``. Every write copies only its own bytes. (Appending and
        # trimming the front instead made CPython reallocate and copy the whole buffer
        # whenever the trimmed prefix ran out: a quarter MiB moved for every output
        # message of a busy terminal.)
        self._buf = bytearray()
        self._start = 0  # once full: where the oldest byte is, and the next write goes
        self.total_written = 0

    def __len__(self) -> int:
        return len(self._buf)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        n = len(view)
        if not n:
            return
        self.total_written += n
        capacity, buf = self.capacity, self._buf
        if n >= capacity:
            buf[:] = view[n - capacity :]
            self._start = 0
            return
        room = capacity - len(buf)
        if room:
            buf += view[:room]
            if n <= room:
                return
            view = view[room:]
            n -= room
        start = self._start
        first = min(n, capacity - start)
        buf[start : start + first] = view[:first]
        if first < n:
            buf[: n - first] = view[first:]
        self._start = (start + n) % capacity

    def snapshot(self) -> bytes:
        start = self._start
        if not start:
            return bytes(self._buf)
        view = memoryview(self._buf)
        try:
            return b"".join((view[start:], view[:start]))
        finally:
            view.release()

    def clear(self) -> None:
        self._buf = bytearray()
        self._start = 0
