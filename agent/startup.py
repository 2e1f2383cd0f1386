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
import random
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import structlog

from agent.clock import Clock, sleep_unless_set
from agent.lifecycle import (
    EXITED_ERROR,
    EXITED_OK,
    SHUTDOWN,
    START,
    START_ERROR,
    START_TIMEOUT,
    TIMEOUT,
    Lifecycle,
)
from agent.retry import Retry, is_retryable, traceback_fields
from agent.scriptlog import Children, LogPump, OutputSink, spawn_script
from agent.sdk.errors import WsagentError
from agent.sdk.models import Metadata

log = structlog.get_logger()

LOG_FILE_NAME: Final = "coder-startup-script.log"
POST_BACKOFF_FLOOR: Final = 1.0
POST_BACKOFF_CEILING: Final = 15.0
OUTPUT_FLUSH_TIMEOUT: Final = 5.0


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
        self._posted = asyncio.Event()
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

    async def drained(self) -> None:
        """Wait until the running reporter has posted every queued state (the caller
        bounds the wait; posting stays with one task, so no state is posted twice)."""
        self.notify()
        while self.lifecycle.pending() is not None and not self.stopped:
            self._posted.clear()
            await self._posted.wait()

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
            self._posted.set()
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
        self._shutting_down = False
        self.metadata: Metadata | None = None
        self.pump: LogPump | None = None

    async def on_metadata(self, metadata: Metadata, first: bool) -> None:
        self.metadata = metadata  # the newest: the shutdown script comes from it
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

    def begin_shutdown(self) -> bool:
        """Report ``shutting_down``; False if the agent never connected (nothing to report).

        From here on the startup script's end is not reported: the shutdown states are."""
        if self.metadata is None or self._closing or self._shutting_down:
            return False
        self._event(SHUTDOWN)
        self._shutting_down = True
        return True

    def finish_shutdown(self, event: str) -> None:
        """``event`` is SHUTDOWN_OK, SHUTDOWN_FAILED or SHUTDOWN_TIMED_OUT."""
        self._event(event, allow_in_shutdown=True)

    async def report_pending(self) -> None:
        """Wait until every queued state was posted (the caller bounds the wait)."""
        await self.reporter.drained()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(
        self, event: str, exit_code: int | None = None, *, allow_in_shutdown: bool = False
    ) -> None:
        if self._closing or (self._shutting_down and not allow_in_shutdown):
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
        cwd = self._working_directory(metadata)
        shell = self._shell()
        running = await spawn_script(
            shell=shell,
            script=metadata.startup_script,
            env=self._environment(metadata),
            cwd=cwd,
            log_path=self._log_path,
            max_log_bytes=self._max_log_bytes,
            children=self._children,
            what="startup script",
            grace=self._grace,
            sink=self._output,
        )
        proc, self.pump = running.proc, running.pump
        self._watchdog, self._watchdog_fd = running.watchdog, running.watchdog_fd
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
