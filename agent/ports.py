"""Listening TCP ports, from netlink ``sock_diag`` or ``/proc/net/tcp`` and ``tcp6``.

sock_diag with a LISTEN state filter is asked first: the kernel skips every other socket,
where ``/proc/net/tcp`` formats them all (about 30 ms at 10,000 sockets, see
docs/benchmarks.md). Where netlink is refused, the ``/proc`` tables are parsed instead.
IPv6 listeners count (Coder reads only the IPv4 table and misses ``[::]`` listeners).
Sockets are mapped to process names only for listeners, by reading ``/proc/<pid>/fd``
until every listener inode is found. The inode → name map is kept between scans, so a
scan looks for owners only when a listener it has not seen before appears (a socket's
owner does not change while it listens), and then reads only the fds it has not seen of
the processes that changed (:class:`SocketOwners`). Results are cached for one second, and
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
# Ports one answer reports at most (the lowest): even with the longest process names, as
# JSON escapes (15 characters of 6 bytes), 4,096 entries stay under 600 KB, inside the
# 1 MiB a coordinate socket takes in one value. Past it the server would close the socket.
MAX_REPORTED_PORTS: Final = 4096


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


class _Walked(NamedTuple):
    """What a walk remembers of one process: its identity when walked (start time, number
    of open fds), the fd names it listed, the socket inode behind each socket fd, and its
    name once read."""

    started: bytes
    fds: int  # -1: not to be trusted next time (over budget, or no identity)
    seen: frozenset[str]
    sockets: dict[str, str]  # fd -> "socket:[inode]", as readlink gives it
    name: str | None


# Fd names remembered across all processes: beyond this, a process is not remembered (it
# is walked again when a new listener is looked for), so memory stays bounded (about
# 100 bytes per fd) whatever the machine holds.
MAX_REMEMBERED_FDS: Final = 65_536


class SocketOwners:
    """Finds the process holding each socket inode by walking ``/proc/<pid>/fd``.

    A walk is the cost of a cold scan: one readlink per open fd of every process. So each
    process's fd directory is remembered (which fd is which socket) with the process's
    identity (start time and fd count). A later search looks in that memory first, then
    lists only the processes that are new or changed and reads only their fds it has not
    seen, and stops once every inode is found. Only an inode still missing after that (an
    fd closed and reopened as another socket) makes it read every fd again. Not
    thread-safe: the PortScanner's lock serialises its use.
    """

    def __init__(self, proc: Path) -> None:
        self._proc = str(proc)
        # /proc/<pid>/fd's st_size is its fd count on Linux 6.2 and later; elsewhere (and
        # in a test's fake tree) the directory is listed instead.
        self._count_by_stat = proc == Path("/proc")
        self._walked: dict[str, _Walked] = {}
        self._remembered = 0
        self.readlinks = 0  # fds read (for tests and the benchmark)

    def names(self, inodes: set[int]) -> dict[int, str]:
        """inode -> process name for the inodes found; the others are not visible."""
        found: dict[int, str] = {}
        if not inodes:
            return found
        # Compared as readlink's text: parsing every target to an int would cost more.
        missing = {f"socket:[{inode}]": inode for inode in inodes}
        try:
            pids = [e for e in os.listdir(self._proc) if e.isdigit()]
        except OSError:
            return found
        live: dict[str, _Walked] = {}
        unchanged: list[str] = []
        changed: list[tuple[str, tuple[bytes, int]]] = []
        for pid in pids:
            identity = self._identity(pid)
            if identity is None:
                continue  # gone, or not ours to read
            known = self._walked.get(pid)
            if known is not None and (known.started, known.fds) == identity:
                live[pid] = self._claim(pid, known, missing, found)
                unchanged.append(pid)
            else:
                changed.append((pid, identity))
        self._remembered = sum(len(w.seen) for w in live.values())
        # New or changed processes: read their new fds until nothing is missing, those with
        # the most fds first (a server holding many listeners is then read first, and the
        # search often stops there). A process not walked is not remembered (it counts as
        # new next time).
        changed.sort(key=lambda entry: entry[1][1], reverse=True)
        partly_read: list[str] = []
        for pid, identity in changed:
            if not missing:
                break
            previous = self._walked.get(pid)
            walked = self._walk(pid, identity, previous)
            if walked is not None:
                live[pid] = self._claim(pid, walked, missing, found)
                if previous is not None and previous.started == identity[0]:
                    partly_read.append(pid)
        # Still missing: an fd reused under the same number, or a process that changed
        # between the two reads. Read every fd again of those read in part before.
        for pid in partly_read + unchanged:
            if not missing:
                break
            self._remembered -= len(live[pid].seen)
            walked = self._walk(pid, (live[pid].started, live[pid].fds), None)
            if walked is None:
                del live[pid]
            else:
                live[pid] = self._claim(pid, walked, missing, found)
        self._walked = {pid: w for pid, w in live.items() if w.fds >= 0}
        return found

    def _identity(self, pid: str) -> tuple[bytes, int] | None:
        base = f"{self._proc}/{pid}"
        try:
            with open(f"{base}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
            started = fields[19] if len(fields) > 19 else b""
            count = os.stat(f"{base}/fd").st_size if self._count_by_stat else 0
            if count == 0:
                count = len(os.listdir(f"{base}/fd"))
        except FileNotFoundError:
            if not os.path.isdir(f"{base}/fd"):
                return None
            return b"", -1  # no stat file (a fake tree): never taken for unchanged
        except OSError:
            return None
        return started, count

    def _walk(
        self, pid: str, identity: tuple[bytes, int], previous: _Walked | None
    ) -> _Walked | None:
        """List ``pid``'s fds and read those ``previous`` has not seen (all without it)."""
        started, count = identity
        try:
            directory = os.open(f"{self._proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            listed = frozenset(os.listdir(directory))
            if previous is None or previous.started != started:
                previous = _Walked(started, count, frozenset(), {}, None)
            sockets = {fd: i for fd, i in previous.sockets.items() if fd in listed}
            readlink = os.readlink
            new = listed - previous.seen
            self.readlinks += len(new)
            for fd in new:
                try:
                    # Relative to the open directory: one path step instead of four.
                    target = readlink(fd, dir_fd=directory)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    sockets[fd] = target
        except OSError:
            return None
        finally:
            os.close(directory)
        if count < 0 or self._remembered + len(listed) > MAX_REMEMBERED_FDS:
            count = -1  # used for this search, then forgotten
        else:
            self._remembered += len(listed)
        return _Walked(started, count, listed, sockets, previous.name)

    def _claim(
        self, pid: str, walked: _Walked, missing: dict[str, int], found: dict[int, str]
    ) -> _Walked:
        """Name the missing inodes ``pid`` holds; returns ``walked`` with its name read."""
        if not missing:
            return walked
        held = [target for target in walked.sockets.values() if target in missing]
        if not held:
            return walked
        name = walked.name
        if name is None:
            try:
                with open(f"{self._proc}/{pid}/comm") as comm:
                    name = comm.read().strip()
            except OSError:
                name = ""
        for target in held:
            found[missing.pop(target)] = name
        return walked._replace(name=name)


class Port(NamedTuple):
    port: int
    process_name: str
    network: str = "tcp"


def reportable(ports: Iterable[Port], own_port: int) -> list[Port]:
    """What an answer reports: not the agent's own port, and only the lowest
    :data:`MAX_REPORTED_PORTS` of the rest. Pure."""
    return sorted(p for p in ports if p.port != own_port)[:MAX_REPORTED_PORTS]


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
        self._owners = SocketOwners(proc)
        self._lock = threading.Lock()
        self.fd_walks = 0  # how many scans had to walk /proc/<pid>/fd (for tests, bench)

    @property
    def fd_reads(self) -> int:
        """How many fds scans have read so far (for tests and the benchmark)."""
        return self._owners.readlinks

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
            found = self._owners.names(unknown)
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
