"""Splitting bus messages into NOTIFY-sized chunks and putting them back together: pure,
no sockets, a fake clock."""

from __future__ import annotations

import json
import random

import pytest

from controlplane.buschunks import CHUNK_BYTES, ChunkError, Reassembler, is_chunk, split
from controlplane.coordinator import node_batches

PAYLOAD_LIMIT = 8000  # PostgreSQL refuses NOTIFY payloads this long or longer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reassembler(clock: Clock | None = None, **limits: float) -> Reassembler:
    return Reassembler(
        max_message=int(limits.get("max_message", 1 << 20)),
        max_buffered=int(limits.get("max_buffered", 2 << 20)),
        timeout=limits.get("timeout", 10.0),
        chunk_bytes=int(limits.get("chunk_bytes", CHUNK_BYTES)),
        clock=clock or Clock(),
    )


def ports_reply(count: int) -> str:
    ports = [{"process_name": f"srv-{p}", "network": "tcp", "port": p} for p in range(count)]
    value = {"type": "listening_ports_response", "request_id": "r1", "ports": ports}
    return json.dumps({"t": "from_agent", "from": "a", "value": value}, ensure_ascii=False)


def test_a_60_kb_reply_goes_in_payloads_postgres_accepts_and_comes_back_whole() -> None:
    message = ports_reply(1200)
    assert len(message) > 60_000
    chunks = split(message, "m1")
    assert len(chunks) == -(-len(message) // CHUNK_BYTES)
    assert all(is_chunk(c) and len(c.encode()) < PAYLOAD_LIMIT for c in chunks)
    r = reassembler()
    results = [r.feed(c) for c in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == message
    assert (r.pending, r.buffered) == (0, 0)


def test_a_multibyte_character_is_never_cut_in_two() -> None:
    # 3-byte characters, offset by one so that chunk edges fall inside characters.
    message = "x" + "€" * 9000
    chunks = split(message, "m", chunk_bytes=100)
    for chunk in chunks:
        assert len(chunk.split(":", 3)[3].encode()) <= 100
    r = reassembler(chunk_bytes=100)
    assert [r.feed(c) for c in chunks][-1] == message


def test_chunks_in_any_order_and_duplicates_give_the_message_once() -> None:
    message = ports_reply(600)
    chunks = split(message, "m")
    shuffled = chunks + chunks[:3]
    random.Random(7).shuffle(shuffled)
    r = reassembler()
    results = [r.feed(c) for c in shuffled]
    assert [x for x in results if x is not None] == [message]


def test_interleaved_messages_from_two_senders_are_kept_apart() -> None:
    one, two = ports_reply(300), ports_reply(400)
    a, b = split(one, "a1"), split(two, "b1")
    r = reassembler()
    out = []
    for i in range(max(len(a), len(b))):
        for chunks in (a, b):
            if i < len(chunks):
                done = r.feed(chunks[i])
                if done is not None:
                    out.append(done)
    assert sorted(out) == sorted([one, two])


def test_a_lost_chunk_times_out_and_frees_its_memory() -> None:
    clock = Clock()
    r = reassembler(clock, timeout=10.0)
    chunks = split(ports_reply(600), "m")
    for c in chunks[:-1]:
        assert r.feed(c) is None
    assert r.pending == 1 and r.buffered > 0
    assert r.next_expiry() == clock.now + 10.0
    clock.now += 9.9
    assert r.expire() == 0
    clock.now += 0.2
    assert r.expire() == 1
    assert (r.pending, r.buffered, r.next_expiry()) == (0, 0, None)
    assert [d.reason for d in r.dropped] == ["timed out"]
    # The straggler starts a new message that can never finish; it times out too.
    assert r.feed(chunks[-1]) is None
    clock.now += 11
    assert r.expire() == 1


def test_unfinished_messages_never_hold_more_than_the_buffer() -> None:
    r = reassembler(max_message=50_000, max_buffered=100_000)
    # Senders that die after their first chunks: each leaves an unfinished message.
    for n in range(100):
        for c in split("y" * 40_000, f"dead{n}")[:-1]:
            r.feed(c)
        assert r.buffered <= 100_000
    assert r.pending <= 100_000 // (4 * CHUNK_BYTES) + 1
    assert any(d.reason == "evicted to stay within the buffer" for d in r.dropped)
    # A whole message still gets through.
    message = "z" * 45_000
    assert [r.feed(c) for c in split(message, "live")][-1] == message


def test_a_message_over_the_limit_is_refused_and_dropped() -> None:
    r = reassembler(max_message=25_000, max_buffered=40_000, chunk_bytes=5000)
    chunks = split("q" * 30_000, "big", chunk_bytes=5000)  # 6: the count is within range
    for chunk in chunks[:5]:
        assert r.feed(chunk) is None
    with pytest.raises(ChunkError, match="over 25000 bytes"):
        r.feed(chunks[5])
    assert (r.pending, r.buffered) == (0, 0)


def test_empty_chunks_count_against_the_buffer_too() -> None:
    r = reassembler(max_message=10_000, max_buffered=10_000, chunk_bytes=10)
    for n in range(5000):
        r.feed(f"#m{n}:0:2:")
    assert 0 < r.buffered <= 10_000 and r.pending < 5000


@pytest.mark.parametrize(
    "payload",
    [
        "{not a chunk}",
        "#m:0:1",  # no data field
        "#:0:1:x",  # no id
        "#m:x:1:data",
        "#m:-1:1:data",
        "#m:1:1:data",  # index past the count
        "#m:0:999999999:data",  # more chunks than the largest message has
    ],
)
def test_malformed_chunks_are_refused(payload: str) -> None:
    with pytest.raises(ChunkError):
        reassembler().feed(payload)


def test_a_chunk_disagreeing_on_the_count_drops_its_message() -> None:
    r = reassembler()
    r.feed("#m:0:3:aaa")
    with pytest.raises(ChunkError, match="says 2 chunks"):
        r.feed("#m:1:2:bbb")
    assert (r.pending, r.buffered) == (0, 0)


def test_split_refuses_an_id_that_would_break_the_header() -> None:
    with pytest.raises(ValueError):
        split("x", "a:b")
    with pytest.raises(ValueError):
        split("x", "")


def test_a_buffer_smaller_than_a_message_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        reassembler(max_message=10, max_buffered=5)


def test_nodes_for_an_agent_go_in_arrays_under_the_limit_in_order() -> None:
    nodes = [{"id": i, "key": "k" * 100} for i in range(50)]
    batches = node_batches(nodes, limit=1000)
    assert [n for b in batches for n in b] == nodes
    assert all(len(json.dumps(b, separators=(",", ":"))) <= 1000 for b in batches)
    assert len(batches) > 1
    big = {"id": "big", "key": "k" * 5000}
    assert node_batches([nodes[0], big, nodes[1]], limit=1000) == [[nodes[0]], [big], [nodes[1]]]
    assert node_batches([]) == []
