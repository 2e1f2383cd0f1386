"""Streams the startup script's output to the control plane as it is produced.

The script's bytes are split into lines (``LineSplitter``), numbered and queued
(``LogQueue``), and posted in batches by ``StartupLogSender``: at most one request every
``interval`` (250 ms) while output flows, each batch retried with backoff until the server
takes it. Every line carries a sequence number within its stream (one stream per script
run), sent as headers a Coder server ignores; the control plane uses them to store a
retried batch once, so nothing is lost and nothing is duplicated across reconnects.

The server keeps at most 1 MiB of output per agent. The queue holds at most that much plus
one line: the first line past the cap is still sent, so the server sees the overflow and
answers 413; the sender then stops and drops the rest. The log file on disk has everything.
"""

from __future__ import annotations

import asyncio
import codecs
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import structlog

from agent.clock import Clock, sleep_unless_set
from agent.errors import ApiError
from agent.retry import Retry, is_retryable, traceback_fields
from agent.sdk.startuplogs import MAX_STARTUP_LOGS_BYTES, StartupLog, output_bytes

log = structlog.get_logger()

SEND_INTERVAL: Final = 0.25
MAX_BATCH_LINES: Final = 2000
# Under the server's 1 MiB body limit even when every byte needs a 6-byte \u escape
# (binary output) and every line its ~70 bytes of keys and timestamp: 768 KiB + 140 KB.
MAX_BATCH_BYTES: Final = 128 * 1024
# A longer line is sent in pieces of this many characters (nothing is cut off). Coder's
# server stores each line in a varchar(1024) column: a longer one fails the whole batch
# with a 500, which the agent would retry for ever, holding back every later line.
MAX_LINE_CHARS: Final = 1024
RETRY_FLOOR: Final = 0.25
RETRY_CEILING: Final = 10.0

# (stream, first sequence number, lines) -> None; raises ApiError/TransportError.
PostLogs = Callable[[str, int, tuple[StartupLog, ...]], Awaitable[None]]


class LineSplitter:
    """Bytes in, complete lines out (without their newline). Pure.

    Decoding is incremental, so a UTF-8 character split across reads stays whole; invalid
    bytes become U+FFFD. A trailing ``\\r`` is dropped (CRLF output).
    """

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""
        self._max = max_chars

    def feed(self, data: bytes) -> list[str]:
        text = self._partial + self._decoder.decode(data)
        *lines, self._partial = text.split("\n")
        out: list[str] = []
        for line in lines:
            out.extend(self._pieces(line.removesuffix("\r")))
        while len(self._partial) >= self._max:
            out.append(self._partial[: self._max])
            self._partial = self._partial[self._max :]
        return out

    def finish(self) -> list[str]:
        """The last line, if the output did not end with a newline."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return self._pieces(rest.removesuffix("\r")) if rest else []

    def _pieces(self, line: str) -> list[str]:
        if len(line) <= self._max:
            return [line]
        return [line[i : i + self._max] for i in range(0, len(line), self._max)]


class LogQueue:
    """Numbered lines waiting to be posted. Pure.

    ``next_seq`` numbers every line accepted into the stream; ``batch()`` returns the head
    without removing it, ``sent(n)`` removes ``n`` lines once the server took them.
    """

    def __init__(
        self,
        cap_bytes: int = MAX_STARTUP_LOGS_BYTES,
        max_lines: int = MAX_BATCH_LINES,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.cap_bytes = cap_bytes
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.stream = ""
        self.next_seq = 0
        self.head_seq = 0
        self.accepted_bytes = 0
        self.dropped_lines = 0
        self.sent_lines = 0  # taken by the server, every stream
        self.full = False
        self.closed = False
        self._lines: deque[tuple[StartupLog, int]] = deque()

    def new_stream(self, stream: str) -> None:
        """A new script run: numbering starts again (the server keeps earlier runs' lines)."""
        self.stream = stream
        self.next_seq = self.head_seq = 0
        self._lines.clear()
        self.full = False

    def add(self, line: StartupLog) -> bool:
        """Queue ``line``; False if it was dropped (past the cap, or the stream closed)."""
        if self.full or self.closed:
            self.dropped_lines += 1
            return False
        size = output_bytes(line.output)
        self._lines.append((line, size))
        self.next_seq += 1
        self.accepted_bytes += size
        # Keep exactly one line past the cap: the server must see the overflow.
        self.full = self.accepted_bytes > self.cap_bytes
        return True

    def batch(self) -> tuple[int, tuple[StartupLog, ...]]:
        out: list[StartupLog] = []
        size = 0
        for line, n in self._lines:
            if out and (len(out) >= self.max_lines or size + n > self.max_bytes):
                break
            out.append(line)
            size += n
        return self.head_seq, tuple(out)

    def sent(self, count: int) -> None:
        for _ in range(min(count, len(self._lines))):
            self._lines.popleft()
        self.head_seq += count
        self.sent_lines += count

    def overflowed(self) -> None:
        """The server refused more: drop what is queued and accept nothing more."""
        self.dropped_lines += len(self._lines)
        self._lines.clear()
        self.closed = True

    def __len__(self) -> int:
        return len(self._lines)


class StartupLogSender:
    """Feeds lines from the script's output into a LogQueue and posts them."""

    def __init__(
        self,
        post: PostLogs,
        *,
        clock: Clock,
        interval: float = SEND_INTERVAL,
        queue: LogQueue | None = None,
        rng: random.Random | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._post = post
        self._interval = interval
        self.queue = queue or LogQueue()
        self._clock = clock
        self._retry = Retry(RETRY_FLOOR, RETRY_CEILING, rng=rng)
        self._now = now or (lambda: datetime.fromtimestamp(clock.time(), UTC))
        self._splitter = LineSplitter()
        self._wake = asyncio.Event()
        self._kicked = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_post = 0.0
        self.stopped = False
        self.posts = 0

    # ---------------------------------------------------------------- input

    def begin(self) -> None:
        """A script run starts: a new stream (sequence numbers start at 0)."""
        self._splitter = LineSplitter()
        self.queue.new_stream(str(uuid.uuid4()))

    def feed(self, data: bytes) -> None:
        self._enqueue(self._splitter.feed(data))

    def end(self) -> None:
        """The script's output ended: send its last line even without a newline."""
        self._enqueue(self._splitter.finish())

    def _enqueue(self, lines: list[str]) -> None:
        if not lines or self.stopped:
            return
        now = self._now()
        for text in lines:
            self.queue.add(StartupLog(now, text, "info"))
        if len(self.queue):
            self._idle.clear()
            self._wake.set()

    # ---------------------------------------------------------------- control

    def kick(self) -> None:
        """A new connection: retry what is pending now, not after a grown backoff."""
        self._retry.reset_backoff()
        self._kicked.set()
        self._wake.set()

    def close(self) -> None:
        self.stopped = True
        self._idle.set()
        self._kicked.set()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every queued line was taken (or dropped). Callers bound the wait."""
        await self._idle.wait()

    # ---------------------------------------------------------------- sending

    async def run(self) -> None:
        while not self.stopped:
            await self._wake.wait()
            self._wake.clear()
            while not self.stopped and len(self.queue):
                # Throttle: one request per interval while output flows; the lines that
                # arrive meanwhile go out together in the next batch.
                wait = self._last_post + self._interval - self._clock.monotonic()
                if wait > 0:
                    await self._clock.sleep(wait)
                delay = await self._send_one()
                if delay is not None:
                    await self._sleep_unless_kicked(delay)
            if not len(self.queue):
                self._idle.set()

    async def _send_one(self) -> float | None:
        """Post one batch; None when it is done with, else the backoff before a retry."""
        first, lines = self.queue.batch()
        if not lines:
            return None
        self._last_post = self._clock.monotonic()
        self.posts += 1
        try:
            await self._post(self.queue.stream, first, lines)
        except ApiError as exc:
            if exc.status == 413:
                self.queue.sent(len(lines))
                self.queue.overflowed()
                log.warning(
                    "startuplogs.overflowed",
                    limit_bytes=self.queue.cap_bytes,
                    hint="the server keeps 1 MiB of startup logs; the log file has all of it",
                )
                self.stopped = True
                self._idle.set()
                return None
            if exc.status in (400, 404):
                # 404: a server without the endpoint; 400: a batch it will never take.
                # Retrying cannot help: give up on streaming, the file has everything.
                log.warning("startuplogs.refused", status=exc.status, error=str(exc))
                self.queue.overflowed()
                self.stopped = True
                self._idle.set()
                return None
            return self._failed(exc)
        except Exception as exc:
            return self._failed(exc)
        self.queue.sent(len(lines))
        failures = self._retry.succeeded()
        if failures:
            log.info("startuplogs.recovered", failures=failures)
        return None

    def _failed(self, exc: Exception) -> float:
        if not is_retryable(exc):
            raise exc
        failure = self._retry.failed(exc, self._clock.monotonic())
        if failure.repeats is not None:
            log.warning(
                "startuplogs.post_failed",
                error=str(exc),
                repeats=failure.repeats,
                queued=len(self.queue),
                **traceback_fields(exc),
            )
        return failure.delay

    async def _sleep_unless_kicked(self, delay: float) -> None:
        # New output does not cut a backoff short (that would post once per line while
        # the server is away); a new connection does.
        self._kicked.clear()
        await sleep_unless_set(self._clock, self._kicked, delay)
