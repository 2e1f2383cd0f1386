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
        # A bytearray trimmed from the front: CPython deletes a prefix of a bytearray in
        # O(1) amortised (it moves a start offset), so this is as cheap as a true ring and
        # snapshot() needs no stitching.
        self._buf = bytearray()
        self.total_written = 0

    def __len__(self) -> int:
        return len(self._buf)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        self.total_written += n
        if n >= self.capacity:
            self._buf[:] = bytes(data[n - self.capacity :])
            return
        self._buf += data
        excess = len(self._buf) - self.capacity
        if excess > 0:
            del self._buf[:excess]

    def snapshot(self) -> bytes:
        return bytes(self._buf)

    def clear(self) -> None:
        self._buf.clear()
