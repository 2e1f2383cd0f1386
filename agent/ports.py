"""Listening TCP ports, read from ``/proc/net/tcp`` and ``/proc/net/tcp6``.

IPv6 listeners count (Coder reads only the IPv4 table and misses ``[::]`` listeners).
Sockets are mapped to process names only for listeners, by scanning ``/proc/<pid>/fd``
until every listener inode is found. Results are cached for one second, and nothing is
scanned unless someone asks (DESIGN.md decision 5).
"""

from __future__ import annotations

import os
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


def parse_proc_net_tcp(text: str) -> list[Listener]:
    """Parse one ``/proc/net/tcp{,6}`` table; keep sockets in LISTEN state. Pure."""
    listeners = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        _, _, port_hex = fields[1].rpartition(":")
        try:
            port = int(port_hex, 16)
            inode = int(fields[9])
        except ValueError:
            continue
        listeners.append(Listener(port, inode))
    return listeners


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
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return names
    for pid in pids:
        fd_dir = proc / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or another user's process
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
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

    def scan(self) -> list[Port]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self._cache_seconds:
            return self._cached[1]
        listeners: list[Listener] = []
        for table in ("tcp", "tcp6"):
            try:
                listeners += parse_proc_net_tcp((self._proc / "net" / table).read_text())
            except FileNotFoundError:
                continue  # no IPv6 in this kernel
        ports = unique_ports(listeners)
        names = _process_names({i for inodes in ports.values() for i in inodes}, self._proc)
        result = [
            Port(port, next((names[i] for i in inodes if names.get(i)), ""))
            for port, inodes in sorted(ports.items())
        ]
        self._cached = (now, result)
        return result
