"""Pure pieces of the terminal data plane: scrollback, stream decoding, commands."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.pty.command import CommandBuilder, motd_banner
from agent.pty.protocol import DialBackDecoder, input_bytes
from agent.pty.ringbuffer import RingBuffer
from agent.sdk.dialback import truncate_reason
from agent.sdk.errors import DecodeError
from agent.sdk.pty import ReconnectingPTYInit, ReconnectingPTYRequest

# ------------------------------------------------------------------ ring buffer


def test_ring_keeps_newest_bytes() -> None:
    ring = RingBuffer(8)
    ring.write(b"abcdef")
    ring.write(b"ghij")
    assert ring.snapshot() == b"cdefghij"
    assert len(ring) == 8
    assert ring.total_written == 10


def test_ring_write_larger_than_capacity_keeps_tail() -> None:
    ring = RingBuffer(4)
    ring.write(b"xy")
    ring.write(b"0123456789")
    assert ring.snapshot() == b"6789"


def test_ring_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="positive"):
        RingBuffer(0)


@given(st.lists(st.binary(max_size=50), max_size=40), st.integers(1, 64))
def test_ring_equals_tail_of_everything(writes: list[bytes], capacity: int) -> None:
    ring = RingBuffer(capacity)
    everything = b""
    for w in writes:
        ring.write(memoryview(w) if len(w) % 2 else w)
        everything += w
        # After every write, wrapped or not: exactly the newest bytes, oldest first.
        assert ring.snapshot() == everything[-capacity:]
        assert len(ring) == min(capacity, len(everything))
        assert ring.total_written == len(everything)
    ring.clear()
    assert ring.snapshot() == b"" and len(ring) == 0
    ring.write(b"again")
    assert ring.snapshot() == b"again"[-capacity:]


# ------------------------------------------------------------------ init + input decoding

requests_st = st.lists(
    st.builds(
        ReconnectingPTYRequest,
        st.text(max_size=20),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
    ),
    max_size=8,
)


def _chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces


@given(
    st.text(min_size=1, max_size=40),
    st.text(max_size=40),
    requests_st,
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_decoder_any_chunking(
    pty_id: str, command: str, requests: list[ReconnectingPTYRequest], cuts: list[int]
) -> None:
    init = ReconnectingPTYInit(pty_id, 40, 120, command)
    stream = init.encode_frame() + b"".join(r.encode() for r in requests)
    decoder = DialBackDecoder()
    got: list[ReconnectingPTYRequest] = []
    for piece in _chunk(stream, cuts):
        got += decoder.feed(piece)
    assert decoder.init == init
    assert got == requests


def test_decoder_init_and_input_in_one_message() -> None:
    frame = ReconnectingPTYInit("a", 1, 2, "").encode_frame()
    decoder = DialBackDecoder()
    got = decoder.feed(frame + b'{"data":"x"} {"height":3,"width":4}')
    assert decoder.init == ReconnectingPTYInit("a", 1, 2, "")
    assert got == [ReconnectingPTYRequest("x"), ReconnectingPTYRequest("", 3, 4)]


def test_decoder_waits_for_length_prefix() -> None:
    decoder = DialBackDecoder()
    frame = ReconnectingPTYInit("a", 1, 2).encode_frame()
    assert decoder.feed(frame[:1]) == []
    assert decoder.init is None
    assert decoder.feed(frame[1:]) == []
    assert decoder.init is not None


@pytest.mark.parametrize(
    "stream",
    [
        struct.pack("<H", 3) + b"xyz",  # init body not JSON
        struct.pack("<H", 2) + b"[]",  # init not an object
        ReconnectingPTYInit("a", 1, 2).encode_frame() + b'"text"',  # input not an object
        ReconnectingPTYInit("a", 1, 2).encode_frame() + b'{"height":70000}',  # not uint16
    ],
)
def test_decoder_rejects_malformed(stream: bytes) -> None:
    with pytest.raises(DecodeError):
        DialBackDecoder().feed(stream)


def test_decoder_caps_input_value_size() -> None:
    decoder = DialBackDecoder(max_value_bytes=64)
    decoder.feed(ReconnectingPTYInit("a", 1, 2).encode_frame())
    with pytest.raises(DecodeError, match="exceeds"):
        decoder.feed(b'{"data":"' + b"x" * 100)


def test_input_bytes_replaces_lone_surrogates_like_go() -> None:
    request = ReconnectingPTYRequest.from_json(json.loads('{"data":"a\\ud800b"}'))
    assert input_bytes(request) == "a\ufffdb".encode()
    assert input_bytes(ReconnectingPTYRequest("é")) == "é".encode()


def test_truncate_reason_on_character_boundary() -> None:
    assert truncate_reason("short") == "short"
    cut = truncate_reason("é" * 100)
    assert len(cut.encode()) <= 123
    assert cut == "é" * 61


# ------------------------------------------------------------------ commands


def test_motd_banner_uses_crlf() -> None:
    assert motd_banner("hello\nworld\n") == b"hello\r\nworld\r\n"
    assert motd_banner("") == b""


def _builder(home: Path, motd: str = "welcome\n") -> CommandBuilder:
    return CommandBuilder(
        environment=lambda: {"A": "1", "TERM": "dumb"},
        motd=lambda: motd,
        directory=lambda: "",
        shell=lambda: "/bin/bash",
        home=lambda: str(home),
    )


def test_empty_command_is_login_shell_with_motd(tmp_path: Path) -> None:
    spec = _builder(tmp_path).build("")
    assert spec.argv == ("/bin/bash", "-l")
    assert spec.env["TERM"] == "xterm-256color"
    assert spec.env["A"] == "1"
    assert spec.cwd == str(tmp_path)
    assert spec.banner == b"welcome\r\n"


def test_hushlogin_suppresses_motd(tmp_path: Path) -> None:
    (tmp_path / ".hushlogin").touch()
    assert _builder(tmp_path).build("").banner == b""


def test_command_runs_with_shell_c_and_no_motd(tmp_path: Path) -> None:
    spec = _builder(tmp_path).build("top -b")
    assert spec.argv == ("/bin/bash", "-c", "top -b")
    assert spec.banner == b""


def test_default_shell_is_executable() -> None:
    from agent.pty.command import user_shell

    assert os.access(user_shell(), os.X_OK)
