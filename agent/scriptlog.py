"""Running a workspace script (startup or shutdown) with its output in a capped log file.

Shared by the startup and shutdown runners: the log file (0600, truncated per run, capped
with a line saying what was dropped), the pump that moves the script's output from a pipe
into it (and into an optional sink, the streamed startup logs), and the watchdog that kills
the script's process group when the agent dies without running its shutdown code.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import structlog

from wscommon.logfile import LogFileError, make_log_dir, open_log_file

log = structlog.get_logger()
READ_CHUNK: Final = 64 * 1024
# Per wake-up of the pipe reader, so a chatty script cannot starve the event loop.
MAX_READ_PER_WAKEUP: Final = 1 << 20
# Room kept below the cap for the two lines saying output was dropped.
TRAILER_RESERVE: Final = 256
MIN_LOG_BYTES: Final = 4096

WATCHDOG_SCRIPT: Final = (
    # dash's kill takes no "--"; "-TERM -PGID" works in dash and bash alike.
    'read _ignored; kill -TERM "-$1" 2>/dev/null || exit 0; '
    'sleep "$2"; kill -KILL "-$1" 2>/dev/null; exit 0'
)


class Children(Protocol):
    def add(self, pgid: int, what: str) -> None: ...
    def launch_argv(self, argv: Sequence[str]) -> list[str]: ...


class OutputSink(Protocol):
    """Where the script's output goes besides the log file (the streamed startup logs)."""

    def begin(self) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def end(self) -> None: ...
    async def flush(self) -> None: ...


class CappedLog:
    """Decides which script output bytes reach the log file. Pure.

    Output up to ``max_bytes - TRAILER_RESERVE`` is kept verbatim; the rest is counted and
    dropped, with one line when dropping starts and one at the end with the total.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(max_bytes, MIN_LOG_BYTES)
        self.budget = self.max_bytes - TRAILER_RESERVE
        self.kept = 0
        self.dropped = 0
        self._last = b"\n"

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        room = self.budget - self.kept
        if self.dropped == 0 and len(data) <= room:
            self.kept += len(data)
            self._last = data[-1:]
            return data
        keep = data[: max(room, 0)] if self.dropped == 0 else b""
        out = keep
        if self.dropped == 0:
            self.kept += len(keep)
            if keep:
                self._last = keep[-1:]
            out += self._line(
                f"[wsagent] startup script output reached the log limit of {self.max_bytes}"
                " bytes; further output is dropped"
            )
        self.dropped += len(data) - len(keep)
        return out

    def finish(self) -> bytes:
        if not self.dropped:
            return b""
        return self._line(f"[wsagent] {self.dropped} bytes of startup script output were dropped")

    def _line(self, text: str) -> bytes:
        prefix = b"" if self._last == b"\n" else b"\n"
        self._last = b"\n"
        return prefix + text.encode() + b"\n"


class LogPump:
    """Moves the script's output from a non-blocking pipe into the capped log file."""

    def __init__(
        self, read_fd: int, log_fd: int, cap: CappedLog, sink: OutputSink | None = None
    ) -> None:
        self._read_fd = read_fd
        self._log_fd = log_fd
        self._cap = cap
        self._sink = sink
        self.closed = asyncio.Event()
        os.set_blocking(read_fd, False)
        asyncio.get_running_loop().add_reader(read_fd, self._on_readable)

    def _on_readable(self) -> None:
        self.drain(MAX_READ_PER_WAKEUP)

    def drain(self, limit: int | None = None) -> None:
        """Read what is in the pipe now (never waits). After the shell exits this moves all
        it wrote into the file, even if a background child keeps the pipe open."""
        taken = 0
        while self._read_fd >= 0 and (limit is None or taken < limit):
            try:
                data = os.read(self._read_fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close()
                return
            taken += len(data)
            if self._sink is not None:
                self._sink.feed(data)  # uncapped: the sink has its own cap
            self._write(self._cap.feed(data))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._log_fd, view)
            except OSError as exc:
                log.warning("startup.log_write_failed", error=str(exc))
                return
            view = view[written:]

    def _close(self) -> None:
        if self._read_fd < 0:
            return
        asyncio.get_running_loop().remove_reader(self._read_fd)
        os.close(self._read_fd)
        self._read_fd = -1
        self._write(self._cap.finish())
        os.close(self._log_fd)
        if self._sink is not None:
            self._sink.end()
        self.closed.set()


def open_log(path: Path) -> int:
    """Create or truncate the log file, mode 0600 even if it existed with looser bits.

    A name the agent must not write through (a planted link, another user's file) is
    refused with a warning, and the script's output goes nowhere: the script still runs.
    """
    make_log_dir(path.parent)
    try:
        return open_log_file(path, truncate=True)
    except LogFileError as exc:
        log.warning("startup.log_refused", path=str(path), error=str(exc))
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def start_watchdog(pgid: int, grace: float) -> tuple[subprocess.Popen[bytes], int]:
    """Start the watchdog for process group ``pgid``; returns it and the pipe's write end,
    which must stay open for as long as the agent lives."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", WATCHDOG_SCRIPT, "wsagent-watchdog", str(pgid), f"{grace:g}"],
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return proc, write_fd


@dataclass
class RunningScript:
    """A started script: its process, the pump filling its log, and its watchdog (whose
    pipe's write end, ``watchdog_fd``, must stay open while the agent lives)."""

    proc: asyncio.subprocess.Process
    pump: LogPump
    watchdog: subprocess.Popen[bytes] | None
    watchdog_fd: int


async def spawn_script(
    *,
    shell: str,
    script: str,
    env: Mapping[str, str],
    cwd: str,
    log_path: Path,
    max_log_bytes: int,
    children: Children,
    what: str,
    grace: float,
    sink: OutputSink | None = None,
) -> RunningScript:
    """Start ``<shell> -c <script>`` in its own session, output into the capped log."""
    log_fd = open_log(log_path)
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *children.launch_argv([shell, "-c", script]),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        os.close(read_fd)
        os.write(log_fd, f"[wsagent] could not start {shell}: {exc}\n".encode())
        os.close(log_fd)
        raise
    finally:
        os.close(write_fd)
    children.add(proc.pid, what)
    if sink is not None:
        sink.begin()
    pump = LogPump(read_fd, log_fd, CappedLog(max_log_bytes), sink)
    watchdog, watchdog_fd = None, -1
    try:
        watchdog, watchdog_fd = start_watchdog(proc.pid, grace)
    except OSError as exc:
        log.warning("script.watchdog_failed", what=what, error=str(exc))
    return RunningScript(proc, pump, watchdog, watchdog_fd)
