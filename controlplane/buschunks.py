"""Messages larger than one NOTIFY payload, split into chunks and put back together.

PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more. A bus message over that is
cut into chunks of at most :data:`CHUNK_BYTES` of its UTF-8 text (never inside a
character), each prefixed ``#<message id>:<index>:<count>:``, and all of them are sent by
one statement, so in one transaction: PostgreSQL delivers a transaction's notifications
together, in order, and only once it commits (docs/scaling.md, "Messages of any size").
Whole messages are JSON objects and start with ``{``, so a chunk is never mistaken for one.

:class:`Reassembler` is the receiving side. Its memory is bounded whatever the senders
do: a message over ``max_message`` bytes is refused, the chunks of unfinished messages
never total more than ``max_buffered`` bytes (the oldest unfinished message is dropped to
make room), and an unfinished message older than ``timeout`` (a lost chunk, a sender that
died mid-way) is dropped by :meth:`Reassembler.expire`. Pure: no sockets, no sleeps; the
clock is a parameter.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from agent.sdk.errors import WsagentError

CHUNK_MARK: Final = "#"
# Data per chunk; the header adds at most ~40 bytes, well under the 8,000-byte payload limit.
CHUNK_BYTES: Final = 7800
_CONTINUATION: Final = 0x80  # UTF-8 bytes 10xxxxxx continue a character
# What one held chunk costs beyond its data (so that many empty chunks count too).
_CHUNK_COST: Final = 64


class ChunkError(WsagentError):
    """A chunk that cannot belong to any message (malformed header, inconsistent count,
    over the size limit). The message it belongs to, if any, is dropped."""


def split(message: str, message_id: str, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """``message`` as chunk payloads, in order. ``message_id`` must not contain ``:``."""
    if ":" in message_id or not message_id:
        raise ValueError("a message id is a non-empty string without ':'")
    if chunk_bytes < 4:
        raise ValueError("a chunk must hold at least one character (4 bytes)")
    data = message.encode()
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + chunk_bytes, len(data))
        while end < len(data) and data[end] & 0xC0 == _CONTINUATION:
            end -= 1  # back off to the start of the character cut in two
        pieces.append(data[start:end])
        start = end
    count = len(pieces)
    return [
        f"{CHUNK_MARK}{message_id}:{index}:{count}:{piece.decode()}"
        for index, piece in enumerate(pieces)
    ]


def is_chunk(payload: str) -> bool:
    return payload.startswith(CHUNK_MARK)


@dataclass
class _Partial:
    count: int
    started: float
    pieces: dict[int, str] = field(default_factory=dict)
    size: int = 0  # bytes of data
    held: int = 0  # what it counts against the buffer


@dataclass(frozen=True, slots=True)
class Dropped:
    """Why an unfinished message was given up (for the caller's log)."""

    message_id: str
    reason: str
    received: int
    count: int


class Reassembler:
    def __init__(
        self,
        *,
        max_message: int,
        max_buffered: int,
        timeout: float,
        chunk_bytes: int = CHUNK_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buffered < max_message:
            raise ValueError("max_buffered must hold at least one whole message")
        self.max_message = max_message
        # Every chunk but the last carries at least chunk_bytes - 3 bytes (split backs off
        # at most three bytes to a character's start).
        self.max_chunks = max_message // max(1, chunk_bytes - 3) + 1
        self.max_buffered = max_buffered
        self.timeout = timeout
        self._clock = clock
        self._partials: OrderedDict[str, _Partial] = OrderedDict()  # oldest first
        self._buffered = 0
        self.dropped: list[Dropped] = []  # since the caller last cleared it

    @property
    def buffered(self) -> int:
        """Bytes held for unfinished messages (data and a per-chunk overhead)."""
        return self._buffered

    @property
    def pending(self) -> int:
        """Unfinished messages."""
        return len(self._partials)

    def feed(self, payload: str) -> str | None:
        """Take one chunk; the whole message once its last chunk is in, else None.

        Raises :class:`ChunkError` for a chunk that cannot be used; an unfinished message
        it belonged to is dropped with it."""
        message_id, index, count, piece = self._parse(payload)
        partial = self._partials.get(message_id)
        if partial is None:
            partial = _Partial(count, self._clock())
            self._partials[message_id] = partial
        elif partial.count != count:
            self._drop(message_id, "inconsistent chunk count")
            raise ChunkError(f"chunk {index} of message {message_id} says {count} chunks")
        if index in partial.pieces:
            return None  # a duplicate changes nothing
        size = len(piece.encode())
        if partial.size + size > self.max_message:
            self._drop(message_id, "over the size limit")
            raise ChunkError(f"message {message_id} is over {self.max_message} bytes")
        cost = size + _CHUNK_COST
        self._make_room(cost, keep=message_id)
        partial.pieces[index] = piece
        partial.size += size
        partial.held += cost
        self._buffered += cost
        if len(partial.pieces) < partial.count:
            return None
        del self._partials[message_id]
        self._buffered -= partial.held
        return "".join(partial.pieces[i] for i in range(partial.count))

    def expire(self) -> int:
        """Drop unfinished messages older than the timeout; how many were dropped."""
        deadline = self._clock() - self.timeout
        old = [k for k, p in self._partials.items() if p.started <= deadline]
        for message_id in old:
            self._drop(message_id, "timed out")
        return len(old)

    def next_expiry(self) -> float | None:
        """When (on the clock) the oldest unfinished message times out; None if none."""
        for partial in self._partials.values():
            return partial.started + self.timeout
        return None

    # ------------------------------------------------------------------ internals

    def _parse(self, payload: str) -> tuple[str, int, int, str]:
        if not payload.startswith(CHUNK_MARK):
            raise ChunkError("not a chunk")
        parts = payload[1:].split(":", 3)
        if len(parts) != 4:
            raise ChunkError("malformed chunk header")
        message_id, raw_index, raw_count, piece = parts
        if not (message_id and raw_index.isdigit() and raw_count.isdigit()):
            raise ChunkError("malformed chunk header")
        index, count = int(raw_index), int(raw_count)
        if not 0 <= index < count or count > self.max_chunks:
            raise ChunkError(f"chunk {index} of {count} is out of range")
        return message_id, index, count, piece

    def _make_room(self, size: int, keep: str) -> None:
        while self._buffered + size > self.max_buffered:
            oldest = next((k for k in self._partials if k != keep), None)
            if oldest is None:
                return  # only the message being built is left; max_message bounds it
            self._drop(oldest, "evicted to stay within the buffer")

    def _drop(self, message_id: str, reason: str) -> None:
        partial = self._partials.pop(message_id, None)
        if partial is None:
            return
        self._buffered -= partial.held
        if len(self.dropped) < 100:
            self.dropped.append(Dropped(message_id, reason, len(partial.pieces), partial.count))
