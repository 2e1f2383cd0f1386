"""Every child process group the agent starts, so shutdown can stop them all.

Children run in their own sessions (process groups). Shutdown sends TERM to each group,
waits a grace period, then KILLs whatever is left.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import structlog

from agent.clock import SYSTEM_CLOCK, Clock
from agent.procprio import ChildPriority

log = structlog.get_logger()


def _group_alive(pgid: int) -> bool:
    """Whether any member of the group still runs.

    ``killpg(pgid, 0)`` also succeeds while the only members left are zombies: orphans
    whose new parent (init, or a reaper) has not collected them yet. Those are dead, and
    waiting the whole grace period for them would only delay shutdown, so /proc decides.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_live_member(pgid)


def _has_live_member(pgid: int, proc: str = "/proc") -> bool:
    try:
        entries = os.listdir(proc)
    except OSError:
        return True  # no /proc: trust killpg
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parens, so split
        # after the last ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class ChildRegistry:
    def __init__(self, clock: Clock = SYSTEM_CLOCK, priority: ChildPriority | None = None) -> None:
        self._clock = clock
        self._groups: dict[int, str] = {}
        self._priority = priority or ChildPriority()

    def launch_argv(self, argv: Sequence[str]) -> list[str]:
        """The argv to start a child with. Every child the agent starts comes through here
        (scripts, terminals, metadata commands, SSH sessions), so process-priority
        management (agent/procprio.py) reaches all of them."""
        return self._priority.argv(argv)

    def add(self, pgid: int, what: str) -> None:
        self._groups[pgid] = what

    def discard(self, pgid: int) -> None:
        self._groups.pop(pgid, None)

    @property
    def groups(self) -> dict[int, str]:
        return dict(self._groups)

    async def terminate_all(self, grace: float) -> None:
        groups = {g: w for g, w in self._groups.items() if _group_alive(g)}
        if not groups:
            return
        for pgid in groups:
            signal_group(pgid, signal.SIGHUP)
            signal_group(pgid, signal.SIGTERM)
        deadline = self._clock.monotonic() + grace
        pending = set(groups)
        delay = 0.01
        while pending and self._clock.monotonic() < deadline:
            # Children are reaped by their owners' asyncio watchers; we only observe.
            await self._clock.sleep(delay)
            delay = min(delay * 2, 0.2)
            pending = {g for g in pending if _group_alive(g)}
        for pgid in pending:
            log.warning("children.kill_after_grace", pgid=pgid, what=groups[pgid], grace=grace)
            signal_group(pgid, signal.SIGKILL)
        self._groups.clear()

    def kill_all_now(self) -> None:
        for pgid in list(self._groups):
            signal_group(pgid, signal.SIGKILL)
        self._groups.clear()
