"""Agent metadata: run each command the template defines on its interval, post the result.

One loop per key, so a key never has two runs at once: a command that takes longer than
its interval delays its next run instead of piling up. Each run is ``<shell> -c <script>``
in its own process group with the session environment, stdout and stderr together, at
most ``OUTPUT_LIMIT`` bytes kept (Coder's 10 KiB; the rest is read and dropped, so a
command printing 10 MB costs no memory) and ended at its timeout (KILL to its group).
The result goes to ``POST /me/metadata/{key}`` as ``{collected_at, age, value, error}``;
a failed post is logged and the next run posts a fresh value.

Timeouts: the template's ``timeout`` seconds; 0 means the interval (Coder's agent uses the
interval too), and 60 s for a command run once (interval 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

import structlog

from agent.clock import SYSTEM_CLOCK, Clock
from agent.retry import FailureThrottle, error_key
from agent.sdk.agentmetadata import MetadataDescription, MetadataResult
from agent.sdk.errors import WsagentError
from agent.sdk.models import Metadata

log = structlog.get_logger()

OUTPUT_LIMIT: Final = 10 * 1024
READ_CHUNK: Final = 64 * 1024
ONCE_TIMEOUT: Final = 60.0

PostResult = Callable[[str, MetadataResult], Awaitable[None]]
Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


class Children(Protocol):
    def add(self, pgid: int, what: str) -> None: ...
    def discard(self, pgid: int) -> None: ...
    def launch_argv(self, argv: Sequence[str]) -> list[str]: ...


def effective_timeout(description: MetadataDescription) -> float:
    if description.timeout > 0:
        return float(description.timeout)
    return float(description.interval) if description.interval > 0 else ONCE_TIMEOUT


class MetadataCollector:
    def __init__(
        self,
        post: PostResult,
        *,
        shell: Callable[[], str],
        environment: Callable[[Metadata], Mapping[str, str]],
        working_directory: Callable[[Metadata], str],
        children: Children,
        clock: Clock = SYSTEM_CLOCK,
        spawn: Spawn | None = None,
    ) -> None:
        self._post = post
        self._shell = shell
        self._environment = environment
        self._working_directory = working_directory
        self._children = children
        self._spawn = spawn or asyncio.create_subprocess_exec
        self._clock = clock
        self._metadata: Metadata | None = None
        self._loops: dict[str, tuple[MetadataDescription, asyncio.Task[None]]] = {}
        self._throttle = FailureThrottle()
        self.runs = 0

    def update(self, metadata: Metadata) -> None:
        """Take the newest metadata: start loops for new keys, restart changed ones, stop
        the ones the template no longer has."""
        self._metadata = metadata
        wanted = {d.key: d for d in metadata.metadata}
        for key, (description, task) in list(self._loops.items()):
            if wanted.get(key) != description:
                task.cancel()
                del self._loops[key]
        for key, description in wanted.items():
            if key not in self._loops:
                task = asyncio.create_task(self._loop(description), name=f"metadata:{key}")
                self._loops[key] = (description, task)

    @property
    def keys(self) -> list[str]:
        return sorted(self._loops)

    def close(self) -> None:
        for _, task in self._loops.values():
            task.cancel()
        self._loops.clear()

    async def _loop(self, description: MetadataDescription) -> None:
        clock = self._clock
        while True:
            started = clock.monotonic()
            result = await self.collect(description)
            try:
                await self._post(description.key, result)
            except WsagentError as exc:
                if self._throttle.failure(error_key(exc), clock.monotonic()) is not None:
                    log.warning("metadata.post_failed", key=description.key, error=str(exc))
            else:
                self._throttle.success()
            if description.interval <= 0:
                return
            await clock.sleep(max(0.0, started + description.interval - clock.monotonic()))

    async def collect(self, description: MetadataDescription) -> MetadataResult:
        """Run the command once; never raises (a failure is the result's ``error``)."""
        self.runs += 1
        collected_at = datetime.fromtimestamp(self._clock.time(), UTC)
        metadata = self._metadata or Metadata()
        timeout = effective_timeout(description)
        try:
            proc = await self._spawn(
                *self._children.launch_argv([self._shell(), "-c", description.script]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(self._environment(metadata)),
                cwd=self._working_directory(metadata),
                start_new_session=True,
            )
        except OSError as exc:
            return MetadataResult(collected_at, 0, "", f"run cmd: {exc}")
        self._children.add(proc.pid, "metadata command")
        kept = bytearray()
        total = 0
        errors: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(READ_CHUNK):
                    total += len(chunk)
                    room = OUTPUT_LIMIT - len(kept)
                    if room > 0:
                        kept += chunk[:room]
                code = await proc.wait()
            if code != 0:
                errors.append(f"exit status {code}")
        except TimeoutError:
            errors.append(f"timed out after {timeout:g}s")
        finally:
            _kill_group(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            self._children.discard(proc.pid)
        if total > OUTPUT_LIMIT:
            errors.append(f"output truncated from {total} to {OUTPUT_LIMIT} bytes")
        error = "run cmd: " + "; ".join(errors) if errors else ""
        return MetadataResult(collected_at, 0, kept.decode("utf-8", "replace"), error)


def _kill_group(pgid: int) -> None:
    """The command is done (or out of time): nothing it started outlives it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
