"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram per message.

``NOTIFY_SOCKET`` names a Unix datagram socket: a path, or ``@name`` for the abstract
namespace. Unset, every call is a no-op, so the agent behaves the same outside systemd.
The variables are removed from this process's environment once read, so the startup
script and users' shells do not inherit them (what ``sd_notify(unset_environment=1)`` does).

The watchdog ping is sent by :meth:`Notifier.run_watchdog`, a task on the agent's event
loop: a loop that stops turning stops the pings, and systemd restarts the service after
``WatchdogSec=``. :func:`block_loop_later` blocks the loop on purpose; it exists only so a
test can prove that (``CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import Final

import structlog

from agent.clock import SYSTEM_CLOCK, Clock

log = structlog.get_logger()

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"
# systemd keeps STATUS= for `systemctl status`; a short line is all it shows anyway.
MAX_STATUS_CHARS: Final = 200
# Without a watchdog the status is still refreshed this often.
STATUS_INTERVAL: Final = 1.0


def socket_address(value: str) -> str | None:
    """The address to send to, or None when the value is unset or not a Unix socket."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # unset, or a kind we do not speak (vsock:...)


def watchdog_interval(usec: str, watchdog_pid: str, pid: int) -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises),
    or None when the watchdog is off or meant for another process."""
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None
        except ValueError:
            return None
    return value / 2 / 1_000_000


class Notifier:
    """Sends notify messages; never raises (a lost message must not stop the agent)."""

    def __init__(
        self, address: str | None, watchdog: float | None = None, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.address = address
        self._clock = clock
        self.watchdog = watchdog if address else None
        self._sock: socket.socket | None = None
        self._status = ""
        self._warned = False
        self.is_ready = False
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A receiver that is not reading must never block the event loop.
            self._sock.setblocking(False)

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str], pid: int, clock: Clock = SYSTEM_CLOCK
    ) -> Notifier:
        """Read and remove the three variables from ``environ``."""
        address = socket_address(environ.pop(NOTIFY_SOCKET, ""))
        usec = environ.pop(WATCHDOG_USEC, "")
        watchdog_pid = environ.pop(WATCHDOG_PID, "")
        return cls(address, watchdog_interval(usec, watchdog_pid, pid), clock)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> bool:
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._warned:  # the socket is the same for every message: say it once
                self._warned = True
                log.warning("sdnotify.send_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> None:
        self.is_ready = True
        self._status = _clean(status)
        self.send(f"READY=1\nSTATUS={self._status}")

    def status(self, status: str) -> None:
        """Send ``STATUS=`` if it changed since the last one."""
        status = _clean(status)
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def stopping(self) -> None:
        if self._status == "stopping":
            return  # said once, when the shutdown began
        self._status = "stopping"
        self.send("STOPPING=1\nSTATUS=stopping")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before systemd's current timeout (TimeoutStopSec while
        stopping) kills the service: the shutdown script's timeout plus a margin."""
        self.send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")

    async def run_watchdog(
        self, current_status: Callable[[], str], status_interval: float = STATUS_INTERVAL
    ) -> None:
        """Ping the watchdog every ``self.watchdog`` s (if on) and refresh the status every
        ``status_interval`` s, from the event loop, forever."""
        tick = min(self.watchdog, status_interval) if self.watchdog else status_interval
        next_ping = self._clock.monotonic()
        while True:
            now = self._clock.monotonic()
            if self.watchdog and now >= next_ping:
                self.send("WATCHDOG=1")
                # From now, not from the schedule: after a stall, no burst of late pings.
                next_ping = now + self.watchdog
            self.status(current_status())
            await self._clock.sleep(min(tick, next_ping - now) if self.watchdog else tick)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _clean(status: str) -> str:
    # One message holds newline-separated assignments: a newline would end the status.
    return " ".join(status.split())[:MAX_STATUS_CHARS]


def block_loop_later(after: float, duration: float) -> asyncio.TimerHandle:
    """TEST HOOK: block the running event loop for ``duration`` s, ``after`` s from now.

    Set through ``CODER_AGENT_DEBUG_BLOCK_LOOP_AFTER`` (and ``..._FOR``); never in production.
    """

    def block() -> None:
        log.warning("sdnotify.debug_blocking_loop", seconds=duration)
        time.sleep(duration)  # deliberately blocking: this is what the hook is for
        log.warning("sdnotify.debug_loop_unblocked")

    return asyncio.get_running_loop().call_later(after, block)
