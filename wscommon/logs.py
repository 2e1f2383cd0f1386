"""Structured logging for every wsagent process: JSON (or readable lines on a terminal) to
stdout, JSON lines to a log file (0600, rotated at a size cap), secrets always redacted.

Event names are ``component.event``. The agent writes ``<log dir>/coder-agent.log``; the
control plane logs to stdout (the demo to a file in its data directory).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import sys
import threading
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import structlog

from wscommon.logfile import make_log_dir, open_log_file

REDACTED: Final = "[REDACTED]"
SENSITIVE_KEYS: Final = frozenset(
    {
        "token",
        "session_token",
        "agent_token",
        "authorization",
        "password",
        "private_key",
        "cookie",
        "coder_session_token",
        "secret",
    }
)
_MIN_SECRET_LEN: Final = 8


class Redactor:
    """Remembers secret values (tokens) and scrubs them from every log field."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        # Very short values would scrub ordinary words; real tokens are long.
        if len(secret) >= _MIN_SECRET_LEN:
            with self._lock:
                self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        # The processor below handles top-level fields; the renderer calls this again on
        # the finished line, which also covers nested values and reprs.
        for secret in tuple(self._secrets):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __call__(
        self, _logger: object, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            if key.lower() in SENSITIVE_KEYS and value:
                event_dict[key] = REDACTED
            elif isinstance(value, str) and self._secrets:
                event_dict[key] = self.scrub(value)
            elif isinstance(value, BaseException) and self._secrets:
                event_dict[key] = self.scrub(repr(value))
        return event_dict


REDACTOR: Final = Redactor()


class RotatingFile:
    """An append-only log file created 0600, rotated to ``.1`` past ``max_bytes``.

    Opened through :func:`wscommon.logfile.open_log_file`, so the constructor raises
    :class:`wscommon.logfile.LogFileError` for a file the agent must not write."""

    def __init__(self, path: Path, max_bytes: int, backups: int = 1) -> None:
        self.path = path
        self.max_bytes = max(max_bytes, 4096)
        self.backups = max(backups, 1)
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        # Safe against a link or someone else's file planted under the name, on every
        # (re)open: a rotation is a new open of the name.
        make_log_dir(self.path.parent)
        self._fd = open_log_file(self.path)
        self._size = os.fstat(self._fd).st_size

    def write(self, line: str) -> None:
        # One line never exceeds the cap on its own.
        data = line.encode("utf-8", "replace")[: self.max_bytes]
        with self._lock:
            if self._fd < 0:
                return
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
                if self._fd < 0:
                    return
            try:
                os.write(self._fd, data)
            except OSError:
                return  # disk full or similar: losing a line beats stopping the agent
            self._size += len(data)

    def _rotate(self) -> None:
        """Shift the backups and start a new file. Never raises: a log that cannot be
        rotated must not take the agent down, and must not outgrow its cap either."""
        try:
            for index in range(self.backups, 0, -1):
                name = self.path.name if index == 1 else f"{self.path.name}.{index - 1}"
                try:
                    os.replace(
                        self.path.with_name(name), self.path.with_name(f"{self.path.name}.{index}")
                    )
                except FileNotFoundError:
                    pass
        except OSError:
            # Cannot rename (read-only directory...): empty the file in place instead.
            try:
                os.ftruncate(self._fd, 0)
                self._size = 0
            except OSError:
                os.close(self._fd)
                self._fd = -1
            return
        os.close(self._fd)
        self._fd = -1
        try:
            self._open()
        except OSError:
            self._fd = -1  # file logging stops; stdout still gets every line

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class BackgroundWriter:
    """Writes log lines to a stream without ever blocking the caller.

    A reader that stops reading (a stalled journald or log shipper, ``wsagent agent | less``)
    fills the pipe, and a plain write would then block the event loop, and with it the
    whole agent. So a line is written at once only when nothing is queued and the
    descriptor can take it without blocking (``poll``, and at most ``PIPE_BUF`` bytes, which
    a pipe takes in one piece); otherwise it is queued for a thread of its own. At most
    ``max_pending`` lines wait; past that they are dropped for this stream (the log file
    still gets them) and counted. Order is kept either way.

    Writes use ``os.write`` on the stream's descriptor, not the stream's buffer: a thread
    stuck in a full pipe must not hold the lock that the interpreter's exit-time flush of
    ``sys.stdout`` needs.
    """

    def __init__(self, stream: TextIO, max_pending: int = 4096) -> None:
        self._stream = stream
        self._poll: select.poll | None = None
        try:
            stream.flush()
            self._fd: int | None = stream.fileno()
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLOUT)
        except (AttributeError, OSError, ValueError):
            self._fd = None  # no descriptor (StringIO in tests): the thread writes through it
        self._queue: queue.Queue[str | None] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._pending = 0  # queued or being written by the thread
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def write(self, text: str) -> int:
        if self._write_now(text):
            return len(text)
        with self._lock:
            self._pending += 1
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            self.dropped += 1
            with self._lock:
                self._pending -= 1
        return len(text)

    def _write_now(self, text: str) -> bool:
        if self._poll is None or self._fd is None:
            return False
        data = text.encode("utf-8", "replace")
        if len(data) > select.PIPE_BUF:
            return False
        with self._lock:
            if self._pending:
                return False  # behind queued lines: keep the order
            try:
                if not self._poll.poll(0):
                    return False
                os.write(self._fd, data)
            except (OSError, ValueError):
                pass  # stdout closed (daemonised, broken pipe): the file has the line
        return True

    def flush(self) -> None:
        """Nothing to do: every line is written as soon as it can be."""

    def _run(self) -> None:
        while (text := self._queue.get()) is not None:
            try:
                self._emit(text)
            except (OSError, ValueError):
                pass  # stdout closed (daemonised, broken pipe): the file has the line
            finally:
                with self._lock:
                    self._pending -= 1

    def _emit(self, text: str) -> None:
        if self._fd is None:
            self._stream.write(text)
            self._stream.flush()
            return
        data = text.encode("utf-8", "replace")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self, timeout: float = 1.0) -> None:
        """Write what is queued, waiting at most ``timeout`` seconds."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


class TeeLogger:
    """structlog logger writing the console line to a stream and the JSON line to a file."""

    def __init__(self, stream: TextIO, file: RotatingFile | None) -> None:
        self._stream = stream
        self._file = file

    def msg(self, json_line: str, console_line: str | None = None) -> None:
        try:
            self._stream.write((console_line or json_line) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed (daemonised, broken pipe): the file still gets the line
        if self._file is not None:
            self._file.write(json_line + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


@dataclass
class _Renderer:
    console: structlog.dev.ConsoleRenderer | None
    redactor: Redactor = REDACTOR

    def __call__(
        self, logger: object, method: str, event_dict: MutableMapping[str, Any]
    ) -> tuple[tuple[str, str | None], dict[str, Any]]:
        json_line = self.redactor.scrub(json.dumps(event_dict, default=repr, ensure_ascii=False))
        console_line = None
        if self.console is not None:
            console_line = self.redactor.scrub(str(self.console(logger, method, dict(event_dict))))
        return (json_line, console_line), {}


def _timestamp(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict["timestamp"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    return event_dict


class _StdlibBridge(logging.Handler):
    """Sends warnings from httpx/websockets through the same redacting pipeline."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger()
        method = "error" if record.levelno >= logging.ERROR else "warning"
        getattr(log, method)(f"lib.{record.name}", message=record.getMessage())


def configure(
    *,
    log_file: Path | None,
    max_bytes: int = 5 << 20,
    backups: int = 1,
    level: str = "info",
    stream: TextIO | None = None,
    background: bool = False,
    extra: Sequence[Callable[..., Any]] = (),
) -> RotatingFile | None:
    """Configure structlog for the process. Returns the file so the caller can close it.

    With ``background`` the stream is written by a :class:`BackgroundWriter` (the agent
    daemon); :func:`close_stream` then writes out what is queued. ``extra`` processors see
    each event after redaction (the agent's ``--log-json``... outputs).
    """
    global _background
    out: TextIO = stream or sys.stdout
    is_tty = False
    try:
        is_tty = out.isatty()
    except (AttributeError, ValueError):
        pass
    file = RotatingFile(log_file, max_bytes, backups) if log_file is not None else None
    if background:
        _background = BackgroundWriter(out)
        out = _background  # type: ignore[assignment]  # duck-typed: write/flush/isatty
    console = structlog.dev.ConsoleRenderer(colors=False) if is_tty else None
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            REDACTOR,
            *extra,
            _Renderer(console),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=lambda *_: TeeLogger(out, file),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [_StdlibBridge()]
    root.setLevel(logging.WARNING)
    return file


_background: BackgroundWriter | None = None


def close_stream(timeout: float = 1.0) -> None:
    """Write out the lines queued for the stream (with ``background``), within ``timeout``."""
    if _background is not None:
        _background.close(timeout)
