"""agent.ports without the network: the /proc/net/tcp parser (fuzzed) and the scanner's
process-name cache over a fake /proc tree (real files and symlinks in a temp dir)."""

from __future__ import annotations

import errno
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ports import (
    Listener,
    NetlinkError,
    NetlinkListeners,
    Port,
    PortScanner,
    netlink_listeners,
    parse_diag_messages,
    parse_proc_net_tcp,
)

HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode\n"
)


def row(sl: int, port: int, inode: int, state: str = "0A", v6: bool = False) -> str:
    addr = "0" * 32 if v6 else "0100007F"
    return (
        f"{sl:4d}: {addr}:{port:04X} {addr}:0000 {state} 00000000:00000000 00:00000000 "
        f"00000000  1000        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_gives_a_list_and_never_an_exception(text: str) -> None:
    listeners = parse_proc_net_tcp(text)
    assert isinstance(listeners, list)
    assert all(0 <= x.port <= 0xFFFF and x.inode >= 0 for x in listeners)


TOKENS = st.sampled_from(
    ["0A", "01", ":", " ", "\t", "\n", "0100007F", "1F90", "FFFFFFFFFF", "-1", "12", "x", "socket"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKENS, max_size=60).map("".join))
def test_near_miss_tables_give_a_list_and_never_an_exception(text: str) -> None:
    assert all(0 <= x.port <= 0xFFFF for x in parse_proc_net_tcp(HEADER + text))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF),
            st.integers(0, 2**32),
            st.sampled_from(["0A", "01", "06", "08"]),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_well_formed_tables_keep_exactly_the_listen_rows(
    rows: list[tuple[int, int, str, bool]],
) -> None:
    text = HEADER + "".join(row(i, p, n, s, v6) for i, (p, n, s, v6) in enumerate(rows))
    expected = [Listener(p, n) for p, n, s, _ in rows if s == "0A"]
    assert parse_proc_net_tcp(text) == expected


def test_the_real_tables_parse() -> None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            text = Path(table).read_text()
            listening = sum(1 for line in text.splitlines()[1:] if line.split()[3] == "0A")
            assert len(parse_proc_net_tcp(text)) == listening


class FakeProc:
    """A /proc tree: net/tcp{,6} tables and <pid>/fd symlinks to "socket:[inode]"."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "net").mkdir(parents=True)
        self.rows: dict[int, tuple[int, bool]] = {}  # inode -> (port, v6)
        self.write()

    def write(self) -> None:
        for name, v6 in (("tcp", False), ("tcp6", True)):
            rows = [(n, p) for n, (p, six) in self.rows.items() if six == v6]
            body = "".join(row(i, p, n, v6=v6) for i, (n, p) in enumerate(rows))
            (self.root / "net" / name).write_text(HEADER + body)

    def listen(
        self, port: int, inode: int, pid: int | None, comm: str = "", v6: bool = False
    ) -> None:
        self.rows[inode] = (port, v6)
        self.write()
        if pid is not None:
            fd = self.root / str(pid) / "fd"
            fd.mkdir(parents=True, exist_ok=True)
            (self.root / str(pid) / "comm").write_text(comm + "\n")
            self.started(pid, 4242)
            os.symlink(f"socket:[{inode}]", fd / str(len(os.listdir(fd)) + 3))

    def started(self, pid: int, ticks: int) -> None:
        """/proc/<pid>/stat with start time ``ticks`` (field 22) and a name with spaces."""
        fields = ["S", *["0"] * 18, str(ticks), *["0"] * 10]
        (self.root / str(pid) / "stat").write_text(f"{pid} (a b) {' '.join(fields)}\n")

    def files(self, pid: int, count: int) -> None:
        """``count`` more fds of ``pid`` that are not sockets."""
        fd = self.root / str(pid) / "fd"
        for _ in range(count):
            os.symlink("/dev/null", fd / str(len(os.listdir(fd)) + 3))

    def reuse(self, pid: int, fd: int, port: int, inode: int) -> None:
        """Close ``fd`` (its socket too) and open it again as a new listener."""
        link = self.root / str(pid) / "fd" / str(fd)
        old = int(os.readlink(link)[8:-1])
        self.rows.pop(old, None)
        link.unlink()
        os.symlink(f"socket:[{inode}]", link)
        self.rows[inode] = (port, False)
        self.write()

    def close(self, inode: int) -> None:
        del self.rows[inode]
        self.write()


def test_process_names_are_cached_and_only_new_listeners_walk_proc(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.listen(8080, 101, pid=10, comm="node")
    proc.listen(8081, 102, pid=11, comm="python3", v6=True)
    proc.listen(9090, 103, pid=None)  # another user's: no visible owner
    scanner = PortScanner(tmp_path, cache_seconds=0)
    assert scanner.scan() == [Port(8080, "node"), Port(8081, "python3"), Port(9090, "")]
    assert scanner.fd_walks == 1

    for _ in range(3):  # nothing new: no walk, not even for the ownerless one
        assert len(scanner.scan()) == 3
    assert scanner.fd_walks == 1

    proc.listen(3000, 104, pid=12, comm="vite")
    assert Port(3000, "vite") in scanner.scan()
    assert scanner.fd_walks == 2

    proc.close(101)
    assert [p.port for p in scanner.scan()] == [3000, 8081, 9090]
    assert scanner.fd_walks == 2


def test_a_new_listener_reads_only_the_new_fds_of_the_changed_process(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.listen(8080, 101, pid=10, comm="node")
    proc.files(10, 50)
    proc.listen(5432, 201, pid=20, comm="postgres")
    proc.files(20, 30)
    proc.listen(9090, 103, pid=None)  # no visible owner: every process is searched
    scanner = PortScanner(tmp_path, cache_seconds=0)
    assert scanner.scan() == [Port(5432, "postgres"), Port(8080, "node"), Port(9090, "")]
    cold = scanner.fd_reads
    assert cold == 51 + 31  # every fd read once

    proc.listen(3000, 102, pid=10, comm="node")  # one more fd in a process of 52
    assert Port(3000, "node") in scanner.scan()
    assert scanner.fd_reads == cold + 1

    proc.listen(9000, 301, pid=30, comm="vite")  # a new process: its fds only
    assert Port(9000, "vite") in scanner.scan()
    assert scanner.fd_reads == cold + 2


def test_a_reused_fd_number_is_read_again(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.listen(8080, 101, pid=10, comm="node")
    proc.listen(8081, 102, pid=10, comm="node")
    scanner = PortScanner(tmp_path, cache_seconds=0)
    assert len(scanner.scan()) == 2
    # Same fd number, same count, another socket: the memory is stale, the search is not.
    proc.reuse(10, 3, 9999, 103)
    assert scanner.scan() == [Port(8081, "node"), Port(9999, "node")]


def test_a_restarted_process_under_the_same_pid_is_read_again(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.listen(8080, 101, pid=10, comm="node")
    scanner = PortScanner(tmp_path, cache_seconds=0)
    assert scanner.scan() == [Port(8080, "node")]
    proc.reuse(10, 3, 8080, 105)
    (tmp_path / "10" / "comm").write_text("deno\n")
    proc.started(10, 9999)  # a new process that reused the pid
    assert scanner.scan() == [Port(8080, "deno")]


def test_results_are_cached_for_the_cache_period(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.listen(8080, 101, pid=10, comm="node")
    scanner = PortScanner(tmp_path, cache_seconds=3600)
    first = scanner.scan()
    proc.listen(8081, 102, pid=10, comm="node")
    assert scanner.scan() is first  # within the period: the same answer, nothing read


# ---------------------------------------------------------------- netlink sock_diag


def diag(port: int, inode: int, attrs: bytes = b"") -> bytes:
    """One SOCK_DIAG_BY_FAMILY message as the kernel lays it out (inet_diag_msg + attrs)."""
    body = (
        struct.pack("=BBBB", socket.AF_INET, 10, 0, 0)
        + struct.pack(">HH", port, 0)
        + bytes(32 + 4 + 8)  # addresses, interface, cookie
        + struct.pack("=IIIII", 0, 0, 128, 1000, inode)
        + attrs
    )
    return struct.pack("=IHHII", 16 + len(body), 20, 2, 1, 0) + body


DONE = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)


def test_diag_messages_uniform_chunk_mixed_chunk_and_done() -> None:
    attrs = struct.pack("=HHB3x", 5, 8, 0)  # an INET_DIAG_SHUTDOWN-like attribute
    uniform = b"".join(diag(p, 100 + p, attrs) for p in (22, 8080, 65535))
    assert parse_diag_messages(uniform) == (
        [Listener(22, 122), Listener(8080, 8180), Listener(65535, 65635)],
        False,
    )
    mixed = diag(3000, 7) + diag(3001, 8, attrs) + DONE  # not uniform: the slow walk
    assert parse_diag_messages(mixed) == ([Listener(3000, 7), Listener(3001, 8)], True)
    assert parse_diag_messages(DONE) == ([], True)


def test_diag_error_and_truncation_raise_oserror() -> None:
    error = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -errno.EPERM) + bytes(16)
    with pytest.raises(NetlinkError) as caught:
        parse_diag_messages(error)
    assert caught.value.errno == errno.EPERM
    with pytest.raises(OSError):
        parse_diag_messages(diag(8080, 1)[:-8] + struct.pack("=I", 999))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_listeners_or_an_oserror(data: bytes) -> None:
    try:
        listeners, _ = parse_diag_messages(data)
    except OSError:
        return
    assert all(0 <= x.port <= 0xFFFF for x in listeners)


@pytest.mark.e2e
def test_netlink_and_proc_agree_on_real_ipv4_and_ipv6_listeners() -> None:
    socks = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, 0))
        sock.listen()
        socks.append(sock)
    idle = socket.socket()  # bound, not listening: in neither list
    idle.bind(("127.0.0.1", 0))
    try:
        ours = {s.getsockname()[1] for s in socks}
        from_netlink = {x for x in netlink_listeners() if x.port in ours}
        from_proc = {x for x in PortScanner(netlink=False).read_listeners() if x.port in ours}
        assert from_netlink == from_proc and {x.port for x in from_netlink} == ours
        assert idle.getsockname()[1] not in {x.port for x in netlink_listeners()}
    finally:
        idle.close()
        for sock in socks:
            sock.close()


@pytest.mark.e2e
def test_netlink_reader_sees_a_new_listener_and_its_closing() -> None:
    reader = NetlinkListeners()
    try:
        reader.read()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port in {x.port for x in reader.read()} and reader.changed
        sock.close()
        assert port not in {x.port for x in reader.read()} and reader.changed
    finally:
        reader.close()


def test_concurrent_scans_share_one_answer() -> None:
    scanner = PortScanner()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: scanner.scan(), range(8)))
    finally:
        scanner.close()
    assert all(r is results[0] for r in results)  # one scan, the rest from the 1 s cache
