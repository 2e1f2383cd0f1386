"""Workspace start: the startup script, its capped log, and lifecycle reporting
(docs/protocol.md, "Startup script").

On the first successful connection of the daemon the script runs once as
``<login shell> -c <script>`` in its own process group, with the session environment.
Its output goes through a pipe into ``coder-startup-script.log`` (0600, truncated per run,
capped with a line saying what was dropped). Coder opens that file without truncating and
without a cap; both are fixed here.

Process hygiene: the group is registered with the agent's ChildRegistry (TERM, grace, KILL
at shutdown). A SIGKILLed agent runs no shutdown code, so a tiny ``/bin/sh`` watchdog in
its own session holds the read end of a pipe whose write end only the agent has: when the
agent dies for any reason the kernel closes it, ``read`` returns, and the watchdog kills
the script's group. PR_SET_PDEATHSIG would only reach the shell, not its children.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, Protocol

import structlog

from agent.clock import Clock, sleep_unless_set
from agent.lifecycle import (
    EXITED_ERROR,
    EXITED_OK,
    START,
    START_ERROR,
    START_TIMEOUT,
    TIMEOUT,
    Lifecycle,
)
from agent.retry import Retry, is_retryable, traceback_fields
from agent.sdk.errors import WsagentError
from agent.sdk.models import Metadata
from wscommon.logfile import LogFileError, make_log_dir, open_log_file

log = structlog.get_logger()

LOG_FILE_NAME: Final = "coder-startup-script.log"
POST_BACKOFF_FLOOR: Final = 1.0
POST_BACKOFF_CEILING: Final = 15.0
READ_CHUNK: Final = 64 * 1024
# Per wake-up of the pipe reader, so a chatty script cannot starve the event loop.
MAX_READ_PER_WAKEUP: Final = 1 << 20
# Room kept below the cap for the two lines saying output was dropped.
TRAILER_RESERVE: Final = 256
MIN_LOG_BYTES: Final = 4096
OUTPUT_FLUSH_TIMEOUT: Final = 5.0

WATCHDOG_SCRIPT: Final = (
    # dash's kill takes no "--"; "-TERM -PGID" works in dash and bash alike.
    'read _ignored; kill -TERM "-$1" 2>/dev/null || exit 0; '
    'sleep "$2"; kill -KILL "-$1" 2>/dev/null; exit 0'
)


class Children(Protocol):
    def add(self, pgid: int, what: str) -> None: ...


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


class LifecycleReporter:
    """Posts every queued lifecycle state in order, retrying (1 s → 15 s) until it lands."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        post: Callable[[str], Awaitable[None]],
        *,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self._post = post
        self._clock = clock
        self._retry = Retry(POST_BACKOFF_FLOOR, POST_BACKOFF_CEILING, rng=rng)
        self._wake = asyncio.Event()
        self._last_reported: str | None = None
        self.stopped = False

    def notify(self) -> None:
        self._wake.set()

    def kick(self) -> None:
        """A new connection: whatever is pending is worth trying again now, not after
        the rest of a backoff that grew while the server was away."""
        self._retry.reset_backoff()
        self._wake.set()

    async def _sleep_unless_woken(self, delay: float) -> None:
        if await sleep_unless_set(self._clock, self._wake, delay):
            self._wake.clear()

    async def run(self) -> None:
        while not self.stopped:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Post until the outbox is empty (or the reporter is stopped)."""
        while not self.stopped and (state := self.lifecycle.pending()) is not None:
            try:
                await self._post(state)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                failure = self._retry.failed(exc, self._clock.monotonic())
                if failure.repeats is not None:
                    log.warning(
                        "lifecycle.post_failed",
                        state=state,
                        error=str(exc),
                        repeats=failure.repeats,
                        **traceback_fields(exc),
                    )
                await self._sleep_unless_woken(failure.delay)
                continue
            self._retry.succeeded()
            self.lifecycle.posted(state)
            # A re-post after a reconnect is routine: one info line per real transition,
            # so a flapping socket does not add a line per retry.
            if state == self._last_reported:
                log.debug("lifecycle.reported", state=state, repost=True)
            else:
                log.info("lifecycle.reported", state=state)
            self._last_reported = state


class WorkspaceStart:
    """The metadata hook: on the first connection start the lifecycle, prepare the home
    (VS Code settings) and run the startup script; on later ones re-report the state."""

    def __init__(
        self,
        *,
        post_lifecycle: Callable[[str], Awaitable[None]],
        children: Children,
        log_path: Path,
        max_log_bytes: int,
        grace: float,
        shell: Callable[[], str],
        environment: Callable[[Metadata], dict[str, str]],
        working_directory: Callable[[Metadata], str],
        clock: Clock,
        prepare: Callable[[Metadata], None] | None = None,
        output: OutputSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.lifecycle = Lifecycle()
        self.reporter = LifecycleReporter(self.lifecycle, post_lifecycle, clock=clock, rng=rng)
        self._children = children
        self._log_path = log_path
        self._max_log_bytes = max_log_bytes
        self._grace = grace
        self._shell = shell
        self._environment = environment
        self._working_directory = working_directory
        self._prepare = prepare
        self._output = output
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_fd = -1
        self._closing = False
        self.pump: LogPump | None = None

    async def on_metadata(self, metadata: Metadata, first: bool) -> None:
        if not first:
            self.lifecycle.reconnected()
            self.reporter.kick()
            return
        self._spawn(self.reporter.run())
        self._event(START)
        if self._prepare is not None:
            try:
                self._prepare(metadata)
            except Exception as exc:  # supervisor boundary: a helper must not stop the start
                log.warning("startup.prepare_failed", error=str(exc))
        self._spawn(self._run_script(metadata))

    def close(self) -> None:
        """The agent is shutting down: report nothing more (as Coder: cancellation means
        no further state); the ChildRegistry stops the script's group."""
        self._closing = True
        self.reporter.stopped = True
        self.reporter.notify()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, event: str, exit_code: int | None = None) -> None:
        if self._closing:
            return
        state = self.lifecycle.apply(event)
        if state in (START_ERROR, START_TIMEOUT):
            # A failed or slow start is not routine: a warning, with where to look.
            log.warning(
                "lifecycle.changed",
                state=state,
                exit_code=exit_code,
                log_path=str(self._log_path),
            )
        else:
            log.info("lifecycle.changed", state=state)
        self.reporter.notify()

    async def _run_script(self, metadata: Metadata) -> None:
        script = metadata.startup_script
        if not script.strip():
            self._event(EXITED_OK)
            return
        try:
            code = await self._execute(metadata)
        except (OSError, WsagentError) as exc:
            log.error(
                "startup.script_failed_to_start", error=str(exc), log_path=str(self._log_path)
            )
            self._event(EXITED_ERROR)
            return
        if code is None:
            return
        # As Coder: the streamed lines land before the final state, so whoever waits for
        # "ready" sees the whole log. A server that is away does not hold the state long.
        if self._output is not None:
            try:
                async with asyncio.timeout(OUTPUT_FLUSH_TIMEOUT):
                    await self._output.flush()
            except TimeoutError:
                log.warning("startup.logs_not_flushed", timeout_seconds=OUTPUT_FLUSH_TIMEOUT)
        self._event(EXITED_OK if code == 0 else EXITED_ERROR, code)

    async def _execute(self, metadata: Metadata) -> int | None:
        env = self._environment(metadata)
        cwd = self._working_directory(metadata)
        shell = self._shell()
        log_fd = open_log(self._log_path)
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                shell,
                "-c",
                metadata.startup_script,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=env,
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
        self._children.add(proc.pid, "startup script")
        if self._output is not None:
            self._output.begin()
        self.pump = LogPump(read_fd, log_fd, CappedLog(self._max_log_bytes), self._output)
        try:
            self._watchdog, self._watchdog_fd = start_watchdog(proc.pid, self._grace)
        except OSError as exc:
            log.warning("startup.watchdog_failed", error=str(exc))
        log.info("startup.script_started", pid=proc.pid, shell=shell, cwd=cwd)
        timeout = metadata.startup_script_timeout
        try:
            if timeout > 0:
                await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
        except TimeoutError:
            log.warning(
                "startup.script_timed_out",
                timeout_seconds=timeout,
                pid=proc.pid,
                log_path=str(self._log_path),
            )
            self._event(TIMEOUT)
        code = await proc.wait()
        self.pump.drain()
        log.info("startup.script_exited", pid=proc.pid, exit_code=code)
        return None if self._closing else code
