"""The agent's startup-log streaming: line splitting, the numbered queue and the sender's
retry, throttle and overflow rules (against an in-memory server function)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.errors import ApiError, TransportError
from agent.sdk.startuplogs import StartupLog
from agent.startuplogs import LineSplitter, LogQueue, StartupLogSender
from tests.fakes.clock import FakeClock

T0 = datetime(2023, 5, 1, tzinfo=UTC)


def line(text: str) -> StartupLog:
    return StartupLog(T0, text)


def test_splitter_joins_reads_and_keeps_utf8_whole() -> None:
    s = LineSplitter()
    euro = "€".encode()
    assert s.feed(b"ab") == []
    assert s.feed(b"c\nd" + euro[:1]) == ["abc"]
    assert s.feed(euro[1:] + b"\r\n\nend") == ["d€", ""]
    assert s.finish() == ["end"]
    assert s.finish() == []


def test_splitter_cuts_long_lines_into_pieces_without_loss() -> None:
    s = LineSplitter(max_chars=4)
    assert s.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert s.feed(b"k\n") == ["ijk"]
    assert s.feed(b"x" * 9 + b"\n") == ["xxxx", "xxxx", "x"]


def test_by_default_no_piece_is_longer_than_coders_column() -> None:
    # Coder stores a line in varchar(1024): characters, not bytes.
    s = LineSplitter()
    pieces = s.feed(("€" * 2500 + "\n").encode())
    assert [len(p) for p in pieces] == [1024, 1024, 452]
    assert "".join(pieces) == "€" * 2500


def test_queue_batches_by_lines_and_bytes_and_numbers_them() -> None:
    q = LogQueue(cap_bytes=1000, max_lines=3, max_bytes=9)
    q.new_stream("s1")
    for text in ("aaaa", "bbbb", "cc", "d"):
        assert q.add(line(text))
    first, batch = q.batch()
    assert first == 0 and [b.output for b in batch] == ["aaaa", "bbbb"]  # 9 bytes max
    q.sent(2)
    first, batch = q.batch()
    assert first == 2 and [b.output for b in batch] == ["cc", "d"]
    # One line bigger than a batch still goes out alone.
    q.sent(2)
    q.add(line("z" * 50))
    assert [b.output for b in q.batch()[1]] == ["z" * 50]


def test_queue_keeps_one_line_past_the_cap_then_drops() -> None:
    q = LogQueue(cap_bytes=10, max_lines=100, max_bytes=100)
    q.new_stream("s")
    assert q.add(line("x" * 8))
    assert q.add(line("y" * 8))  # passes the cap: kept so the server sees it
    assert q.full
    assert not q.add(line("z"))
    assert len(q) == 2 and q.dropped_lines == 1
    q.overflowed()
    assert len(q) == 0 and not q.add(line("w"))


class Server:
    """Records posts; fails the first ``failures`` of them, or answers ``status``."""

    def __init__(self, failures: int = 0, status: int = 0, lose_reply: int = 0) -> None:
        self.failures = failures
        self.status = status
        self.lose_reply = lose_reply
        self.stored: list[tuple[str, int, str]] = []
        self.calls = 0
        self.called = asyncio.Event()

    async def post(self, stream: str, first: int, logs: tuple[StartupLog, ...]) -> None:
        self.calls += 1
        self.called.set()
        if self.failures:
            self.failures -= 1
            raise TransportError("PATCH", "u", "connection refused")
        if self.status:
            raise ApiError("PATCH", "u", self.status, "no")
        # Store as the control plane does: skip numbers already stored for this stream.
        have = sum(1 for s, _, _ in self.stored if s == stream)
        for i, entry in enumerate(logs):
            if first + i >= have:
                self.stored.append((stream, first + i, entry.output))
        if self.lose_reply:
            self.lose_reply -= 1
            raise TransportError("PATCH", "u", "read timed out")


async def run_sender(
    sender: StartupLogSender, clock: FakeClock, body: Coroutine[Any, Any, None]
) -> None:
    """Run the sender and ``body`` on the fake clock until ``body`` is done."""
    task = asyncio.create_task(sender.run())
    try:
        await clock.run(body, within=600)
    finally:
        sender.close()
        await clock.run(task, within=600)


async def test_lines_arrive_in_order_once_despite_failures_and_lost_replies() -> None:
    server = Server(failures=2, lose_reply=2)
    clock = FakeClock()
    sender = StartupLogSender(server.post, clock=clock, interval=0.001)

    async def body() -> None:
        sender.begin()
        for i in range(500):
            sender.feed(f"line {i}\n".encode())
            if i % 50 == 0:
                await asyncio.sleep(0)
        sender.feed(b"tail without newline")
        sender.end()
        await sender.flush()

    await run_sender(sender, clock, body())
    assert [o for _, _, o in server.stored] == [f"line {i}" for i in range(500)] + [
        "tail without newline"
    ]
    assert [n for _, n, _ in server.stored] == list(range(501))


async def test_posts_are_throttled_while_output_flows() -> None:
    server = Server()
    clock = FakeClock()
    sender = StartupLogSender(server.post, clock=clock, interval=0.2)

    async def body() -> None:
        sender.begin()
        end = clock.monotonic() + 0.5
        i = 0
        while clock.monotonic() < end:
            sender.feed(f"{i}\n".encode())
            i += 1
            await clock.sleep(0.005)
        await sender.flush()

    await run_sender(sender, clock, body())
    # 0.5 s of output at one post per 0.2 s: a handful of posts, not one per line.
    assert 2 <= server.calls <= 5, server.calls
    assert len(server.stored) > 50


async def test_413_stops_sending_and_drops_the_rest() -> None:
    server = Server(status=413)
    clock = FakeClock()
    sender = StartupLogSender(server.post, clock=clock, interval=0.001)

    async def body() -> None:
        sender.begin()
        sender.feed(b"a\nb\n")
        await sender.flush()
        sender.feed(b"c\n")

    await run_sender(sender, clock, body())
    assert server.calls == 1 and sender.stopped
    assert sender.queue.closed and len(sender.queue) == 0


@pytest.mark.parametrize("status", [400, 404])
async def test_a_refusing_server_is_not_retried(status: int) -> None:
    server = Server(status=status)
    clock = FakeClock()
    sender = StartupLogSender(server.post, clock=clock, interval=0.001)

    async def body() -> None:
        sender.begin()
        sender.feed(b"a\n")
        await sender.flush()

    await run_sender(sender, clock, body())
    assert server.calls == 1


async def test_new_output_does_not_cut_a_backoff_short_but_a_kick_does() -> None:
    server = Server(failures=1)
    clock = FakeClock()
    sender = StartupLogSender(server.post, clock=clock, interval=0.001)
    sender._retry.backoff.floor = sender._retry.backoff._current = 30.0

    async def body() -> None:
        sender.begin()
        sender.feed(b"a\n")
        await server.called.wait()
        server.called.clear()
        for _ in range(20):
            sender.feed(b"more\n")
            await clock.sleep(0.001)
        assert server.calls == 1  # still backing off
        sender.kick()
        await sender.flush()

    await run_sender(sender, clock, body())
    assert server.calls == 2
    assert [o for _, _, o in server.stored] == ["a"] + ["more"] * 20


@pytest.mark.parametrize("line_chars", [1, 60, 4096])
def test_a_full_batch_of_binary_output_fits_the_servers_body_limit(line_chars: int) -> None:
    from agent.sdk import codec
    from agent.sdk.startuplogs import PatchStartupLogs

    q = LogQueue()
    q.new_stream("s")
    # Every byte becomes a six-byte \u0001; fill the queue up to its cap or 5,000 lines.
    while len(q) < 5000 and q.add(line("\x01" * line_chars)):
        pass
    _, batch = q.batch()
    body = codec.dumps(PatchStartupLogs(batch).to_json())
    assert len(body) < 1 << 20, len(body)
