"""Listening TCP ports, from netlink ``sock_diag`` or ``/proc/net/tcp`` and ``tcp6``.

sock_diag with a LISTEN state filter is asked first: the kernel skips every other socket,
where ``/proc/net/tcp`` formats them all (about 30 ms at 10,000 sockets, see
docs/benchmarks.md). Where netlink is refused, the ``/proc`` tables are parsed instead.
IPv6 listeners count (Coder reads only the IPv4 table and misses ``[::]`` listeners).
Sockets are mapped to process names only for listeners, by scanning ``/proc/<pid>/fd``
until every listener inode is found. The inode → name map is kept between scans, so a
scan walks ``/proc/<pid>/fd`` only when a listener it has not seen before appears (a
socket's owner does not change while it listens). Results are cached for one second, and
nothing is scanned unless someone asks (docs/design.md, "Listening ports on demand").
"""

from __future__ import annotations

import functools
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, NamedTuple

TCP_LISTEN: Final = "0A"
CACHE_SECONDS: Final = 1.0
MIN_PORT: Final = 9


class Listener(NamedTuple):
    # A tuple, not a dataclass: a scan builds one per listening socket (10,000s), and a
    # tuple is several times cheaper to create.
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


# sock_diag (linux/inet_diag.h, linux/sock_diag.h): ask the kernel for TCP sockets in LISTEN
# state only; established sockets are skipped in the kernel, not copied and parsed here.
NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
TCP_LISTEN_STATE: Final = 10
_NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states; then a zeroed inet_diag_sockid.
_DIAG_REQUEST = struct.Struct("=BBBxI48x")
# One unpack per message: nlmsg_len, nlmsg_type, then inet_diag_msg's sport (big-endian,
# read little-endian and swapped) and inode.
_DIAG_MSG = struct.Struct("=IH14xH62xI")
_FIRST_LENGTH = struct.Struct("=I")
NETLINK_TIMEOUT: Final = 2.0
NETLINK_RECV_BYTES: Final = 65536


class NetlinkError(OSError):
    """The kernel refused or garbled a sock_diag dump."""


@functools.cache
def _uniform_layout(length: int) -> struct.Struct:
    return struct.Struct(f"{_DIAG_MSG.format}{length - _DIAG_MSG.size}x")


def parse_diag_messages(data: bytes) -> tuple[list[Listener], bool]:
    """Parse one recv() of a sock_diag dump. Returns (listeners, done). Pure."""
    # Fast path: the kernel fills a chunk with same-size messages (same attributes), so
    # one iter_unpack in C does the whole chunk; checked row by row, else the slow walk.
    if len(data) >= _DIAG_MSG.size:
        (first,) = _FIRST_LENGTH.unpack_from(data)
        if first >= _DIAG_MSG.size and first % 4 == 0 and len(data) % first == 0:
            rows = list(_uniform_layout(first).iter_unpack(data))
            if all(row[0] == first and row[1] == SOCK_DIAG_BY_FAMILY for row in rows):
                return [Listener(((p & 0xFF) << 8) | (p >> 8), i) for _, _, p, i in rows], False
    listeners: list[Listener] = []
    offset = 0
    header = _NLMSG_HEADER.size
    unpack_header = _NLMSG_HEADER.unpack_from
    while offset + header <= len(data):
        length, kind, _, _, _ = unpack_header(data, offset)
        if length < header or offset + length > len(data):
            raise NetlinkError(f"truncated netlink message ({length} bytes at {offset})")
        if kind == NLMSG_DONE:
            return listeners, True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, offset + header)
            raise NetlinkError(-errno, f"sock_diag: {os.strerror(-errno)}")
        if kind == SOCK_DIAG_BY_FAMILY and length >= _DIAG_MSG.size:
            _, _, port, inode = _DIAG_MSG.unpack_from(data, offset)
            listeners.append(Listener(((port & 0xFF) << 8) | (port >> 8), inode))
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    return listeners, False


class NetlinkListeners:
    """Reads listeners through sock_diag, remembering the last dump chunk by chunk.

    The kernel sends an unchanged table as the same bytes, so an unchanged chunk costs a
    memcmp instead of a parse, and ``changed`` tells the caller it may reuse its answer.
    The netlink socket stays open between reads: replies carry its port id, which must not
    change for the bytes to repeat. Memory is bounded by the listener table (~124 B each).
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._last: list[tuple[bytes, list[Listener], bool]] = []
        self.changed = True

    def read(self) -> list[Listener]:
        """TCP listeners of both families; OSError where sock_diag is unavailable."""
        try:
            return self._read()
        except BaseException:
            self.close()  # a half-read dump must not leave replies queued for the next
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._last = []
        self.changed = True

    def _read(self) -> list[Listener]:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            self._sock.settimeout(NETLINK_TIMEOUT)
        sock = self._sock
        listeners: list[Listener] = []
        chunks: list[tuple[bytes, list[Listener], bool]] = []
        changed = False
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            request = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN_STATE)
            header = _NLMSG_HEADER.pack(
                _NLMSG_HEADER.size + len(request),
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                0,
            )
            sock.sendall(header + request)
            done = False
            while not done:
                # The kernel's dump chunks are at most 32 KiB; a bigger buffer never truncates.
                data = sock.recv(NETLINK_RECV_BYTES)
                index = len(chunks)
                if index < len(self._last) and self._last[index][0] == data:
                    _, found, done = self._last[index]
                else:
                    found, done = parse_diag_messages(data)
                    changed = True
                chunks.append((data, found, done))
                listeners += found
        self.changed = changed or len(chunks) != len(self._last)
        self._last = chunks
        return listeners


def netlink_listeners() -> list[Listener]:
    """TCP listeners of both families via netlink sock_diag with a LISTEN state filter.

    Cheaper than /proc/net/tcp when most sockets are not listening; raises OSError where
    sock_diag is unavailable (then the caller reads /proc).
    """
    reader = NetlinkListeners()
    try:
        return reader.read()
    finally:
        reader.close()


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


class Port(NamedTuple):
    port: int
    process_name: str
    network: str = "tcp"


class PortScanner:
    def __init__(
        self,
        proc: Path = Path("/proc"),
        cache_seconds: float = CACHE_SECONDS,
        *,
        netlink: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._proc = proc
        self._cache_seconds = cache_seconds
        self._clock = clock
        # sock_diag reads the kernel's own tables, so it is only right for the real /proc.
        use_netlink = (proc == Path("/proc")) if netlink is None else netlink
        self._netlink = NetlinkListeners() if use_netlink else None
        self._cached: tuple[float, list[Port]] | None = None
        # inode -> process name ("" when no visible process holds it, e.g. another user's),
        # for the listeners of the last scan only, so it never outgrows the socket table.
        self._names: dict[int, str] = {}
        # The raw listeners of the last scan and its answer (both as big as the listener
        # table): an unchanged table skips the whole mapping.
        self._last: tuple[list[Listener], list[Port]] | None = None
        self._lock = threading.Lock()
        self.fd_walks = 0  # how many scans had to walk /proc/<pid>/fd (for tests, bench)

    def close(self) -> None:
        """Release the netlink socket (the next scan opens it again).

        Never waits for a scan in progress (shutdown calls this on the event loop): the
        socket then goes with the process.
        """
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._netlink is not None:
                self._netlink.close()
        finally:
            self._lock.release()

    def read_listeners(self) -> list[Listener]:
        """The listening TCP sockets of both families (IPv4 and IPv6).

        netlink sock_diag when available (the kernel filters on LISTEN), else the LISTEN
        rows of /proc/net/tcp{,6}.
        """
        if self._netlink is not None:
            try:
                return self._netlink.read()
            except OSError:
                self._netlink = None  # e.g. seccomp or an old kernel: /proc from now on
        listeners: list[Listener] = []
        for table in ("tcp", "tcp6"):
            try:
                listeners += parse_proc_net_tcp((self._proc / "net" / table).read_text())
            except FileNotFoundError:
                continue  # no IPv6 in this kernel
        return listeners

    def scan(self) -> list[Port]:
        """The listening ports, at most ``cache_seconds`` old. Thread-safe: the agent scans
        in a worker thread, and two requests at once must not share the netlink socket."""
        with self._lock:
            return self._scan()

    def _scan(self) -> list[Port]:
        now = self._clock()
        if self._cached is not None and now - self._cached[0] < self._cache_seconds:
            return self._cached[1]
        listeners = self.read_listeners()
        unchanged = self._netlink is not None and not self._netlink.changed
        if self._last is not None and (unchanged or listeners == self._last[0]):
            # The same sockets as last time (the common case): same owners, same answer.
            self._cached = (now, self._last[1])
            return self._last[1]
        known = self._names
        names: dict[int, str] = {}
        by_port: dict[int, int] = {}  # port -> the inode whose process name is shown
        duplicates: list[Listener] = []  # same port again (IPv4 + IPv6, SO_REUSEPORT)
        unknown: set[int] = set()
        for listener in listeners:
            port, inode = listener
            if port < MIN_PORT:
                continue
            name = known.get(inode)
            if name is None:
                unknown.add(inode)
            else:
                names[inode] = name
            if port in by_port:
                duplicates.append(listener)
            else:
                by_port[port] = inode
        if unknown:
            self.fd_walks += 1
            found = _process_names(unknown, self._proc)
            for inode in unknown:
                names[inode] = found.get(inode, "")
        for port, inode in duplicates:
            if not names[by_port[port]] and names[inode]:
                by_port[port] = inode  # show a name when any socket of the port has one
        self._names = names
        result = [Port(port, names[inode]) for port, inode in sorted(by_port.items())]
        self._cached = (now, result)
        self._last = (listeners, result)
        return result
