"""Listening TCP ports, read from ``/proc/net/tcp`` and ``/proc/net/tcp6``.

IPv6 listeners count (Coder reads only the IPv4 table and misses ``[::]`` listeners).
Sockets are mapped to process names only for listeners, by scanning ``/proc/<pid>/fd``
until every listener inode is found. The inode → name map is kept between scans, so a
scan walks ``/proc/<pid>/fd`` only when a listener it has not seen before appears (a
socket's owner does not change while it listens). Results are cached for one second, and
nothing is scanned unless someone asks (DESIGN.md decision 5).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

TCP_LISTEN: Final = "0A"
CACHE_SECONDS: Final = 1.0
MIN_PORT: Final = 9


@dataclass(frozen=True, slots=True)
class Listener:
    port: int
    inode: int


# One LISTEN row: "sl: local_ip:PORT remote_ip:port 0A tx:rx tr:when retrnsmt uid timeout
# inode". A regex over the whole table runs in C and skips the (usually far more common)
# non-listening rows at the state field, about 10x faster than splitting every line.
_LISTEN_ROW = re.compile(
    r"^[ \t]*\d+:[ \t]+[0-9A-Fa-f]+:([0-9A-Fa-f]{1,8})[ \t]+[0-9A-Fa-f]+:[0-9A-Fa-f]+[ \t]+"
    + TCP_LISTEN
    + r"[ \t]+(?:\S+[ \t]+){5}(\d{1,20})(?:[ \t]|$)",
    re.MULTILINE,
)


def parse_proc_net_tcp(text: str) -> list[Listener]:
    """Parse one ``/proc/net/tcp{,6}`` table; keep sockets in LISTEN state. Pure.

    Any text gives a list (malformed rows are skipped) and never an exception.
    """
    return [
        Listener(int(port, 16), int(inode))
        for port, inode in _LISTEN_ROW.findall(text)
        if int(port, 16) <= 0xFFFF
    ]


def unique_ports(listeners: Iterable[Listener]) -> dict[int, list[int]]:
    """Port → inodes, skipping ports below 9 (as Coder does). Pure."""
    ports: dict[int, list[int]] = {}
    for listener in listeners:
        if listener.port >= MIN_PORT:
            ports.setdefault(listener.port, []).append(listener.inode)
    return ports


def _process_names(inodes: set[int], proc: Path) -> dict[int, str]:
    """Find the process holding each socket inode; stops once all are found."""
    names: dict[int, str] = {}
    if not inodes:
        return names
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return names
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or another user's process
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None and inode not in names:
                try:
                    names[inode] = (proc / pid / "comm").read_text().strip()
                except OSError:
                    names[inode] = ""
        if len(names) == len(wanted):
            break
    return names


@dataclass(frozen=True, slots=True)
class Port:
    port: int
    process_name: str
    network: str = "tcp"


class PortScanner:
    def __init__(self, proc: Path = Path("/proc"), cache_seconds: float = CACHE_SECONDS) -> None:
        self._proc = proc
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, list[Port]] | None = None
        # inode -> process name ("" when no visible process holds it, e.g. another user's),
        # for the listeners of the last scan only, so it never outgrows the socket table.
        self._names: dict[int, str] = {}
        self.fd_walks = 0  # how many scans had to walk /proc/<pid>/fd (for tests, bench)

    def read_listeners(self) -> list[Listener]:
        """The LISTEN rows of both tables (IPv4 and IPv6)."""
        listeners: list[Listener] = []
        for table in ("tcp", "tcp6"):
            try:
                listeners += parse_proc_net_tcp((self._proc / "net" / table).read_text())
            except FileNotFoundError:
                continue  # no IPv6 in this kernel
        return listeners

    def scan(self) -> list[Port]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_seconds:
            return self._cached[1]
        ports = unique_ports(self.read_listeners())
        inodes = {i for found in ports.values() for i in found}
        unknown = inodes - self._names.keys()
        if unknown:
            self.fd_walks += 1
            found = _process_names(unknown, self._proc)
            self._names.update({inode: found.get(inode, "") for inode in unknown})
        self._names = {inode: self._names[inode] for inode in inodes}
        result = [
            Port(port, next((self._names[i] for i in found if self._names[i]), ""))
            for port, found in sorted(ports.items())
        ]
        self._cached = (now, result)
        return result
