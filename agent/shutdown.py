"""The shutdown script: run on the agent's first SIGTERM, before it disconnects.

``<shell> -c <shutdown_script>`` runs in its own session with the session environment (the
agent's token included: it stays valid, the agent has not let go of it yet), output into
``coder-shutdown-script.log`` (0600, capped like the startup log). Its outcome is
``ok`` (exit 0), ``error`` (non-zero exit, or it could not start) or ``timeout``.

Coder lets a script that outlives its timeout run on and waits for it, so a hanging script
holds the agent until systemd kills everything. Here the timeout ends it: TERM to its
process group, a short grace, then KILL. A timeout of 0 (a template that set none) means
300 s, the default of Coder's Terraform provider. Before starting, the runner asks the
service manager for the time it needs (``extend_stop``: systemd's EXTEND_TIMEOUT_USEC).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import structlog

from agent.scriptlog import Children, spawn_script
from agent.sdk.errors import WsagentError
from agent.sdk.models import Metadata

log = structlog.get_logger()

LOG_FILE_NAME: Final = "coder-shutdown-script.log"
DEFAULT_TIMEOUT: Final = 300.0
KILL_GRACE: Final = 1.0
# How long the last shutdown state may take to reach the server (Coder waits 5 s; here the
# agent's whole shutdown must fit in the script's timeout plus 5 s).
REPORT_WAIT: Final = 1.5
# What the agent needs after the script: report the last state, then close (daemon.py).
AFTER_SCRIPT: Final = 5.0

OK: Final = "ok"
ERROR: Final = "error"
TIMEOUT: Final = "timeout"


def effective_timeout(metadata: Metadata) -> float:
    return metadata.shutdown_script_timeout or DEFAULT_TIMEOUT


class ShutdownScript:
    def __init__(
        self,
        *,
        children: Children,
        log_path: Path,
        max_log_bytes: int,
        shell: Callable[[], str],
        environment: Callable[[Metadata], Mapping[str, str]],
        working_directory: Callable[[Metadata], str],
        watchdog_grace: float,
        extend_stop: Callable[[float], None] | None = None,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self._children = children
        self._log_path = log_path
        self._max_log_bytes = max_log_bytes
        self._shell = shell
        self._environment = environment
        self._working_directory = working_directory
        self._watchdog_grace = watchdog_grace
        self._extend_stop = extend_stop
        self._kill_grace = kill_grace

    async def run(self, metadata: Metadata) -> str:
        script = metadata.shutdown_script
        if not script.strip():
            return OK
        timeout = effective_timeout(metadata)
        if self._extend_stop is not None:
            self._extend_stop(timeout + self._kill_grace + AFTER_SCRIPT)
        shell = self._shell()
        try:
            running = await spawn_script(
                shell=shell,
                script=script,
                env=self._environment(metadata),
                cwd=self._working_directory(metadata),
                log_path=self._log_path,
                max_log_bytes=self._max_log_bytes,
                children=self._children,
                what="shutdown script",
                grace=self._watchdog_grace,
            )
        except (OSError, WsagentError) as exc:
            log.error("shutdown.script_failed_to_start", error=str(exc))
            return ERROR
        proc = running.proc
        log.info("shutdown.script_started", pid=proc.pid, timeout_seconds=timeout)
        try:
            async with asyncio.timeout(timeout):
                code = await proc.wait()
        except TimeoutError:
            log.warning(
                "shutdown.script_timed_out",
                pid=proc.pid,
                timeout_seconds=timeout,
                log_path=str(self._log_path),
            )
            await self._stop_group(proc)
            running.pump.drain()
            return TIMEOUT
        running.pump.drain()
        if code == 0:
            log.info("shutdown.script_exited", pid=proc.pid, exit_code=code)
            return OK
        log.warning(
            "shutdown.script_exited", pid=proc.pid, exit_code=code, log_path=str(self._log_path)
        )
        return ERROR

    async def _stop_group(self, proc: asyncio.subprocess.Process) -> None:
        """TERM the script's process group, then KILL what is left after the grace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._kill_grace
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout_at(deadline):
                await proc.wait()
                # The shell is gone; its children may take the rest of the grace.
                while _group_exists(proc.pid):
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
