"""Byte-stream extension objects and targets: pure decoding and validation."""

from __future__ import annotations

import pytest

from agent.sdk.errors import DecodeError
from agent.sdk.extensions import (
    StreamError,
    StreamRequest,
    Target,
    decode_extension,
)


@pytest.mark.parametrize(
    ("text", "target"),
    [("ssh", Target("ssh")), ("tcp:1", Target("tcp", 1)), ("tcp:65535", Target("tcp", 65535))],
)
def test_targets_round_trip(text: str, target: Target) -> None:
    assert Target.parse(text) == target
    assert str(target) == text
    assert target.proto == text.split(":")[0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SSH",
        "tcp",
        "tcp:",
        "tcp:0",
        "tcp:65536",
        "tcp:+80",
        "tcp:-1",
        "tcp: 80",
        "tcp:٨٠",
        "tcp:0000080",
        "udp:53",
        "ssh:22",
        "tcp:80:1",
    ],
)
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Target.parse(text)


def test_stream_request_round_trips() -> None:
    request = StreamRequest("abc", Target("tcp", 8080), "192.0.2.1 5555")
    assert decode_extension(request.to_json()) == request
    assert request.to_json() == {
        "type": "stream_request",
        "session_id": "abc",
        "target": "tcp:8080",
        "client_addr": "192.0.2.1 5555",
    }
    bare = StreamRequest("abc", Target("ssh"))
    assert "client_addr" not in bare.to_json()
    assert decode_extension(bare.to_json()) == bare


def test_stream_request_with_bad_target_names_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        decode_extension({"type": "stream_request", "session_id": "x", "target": "tcp:0"})
    assert info.value.path == "$.target"


def test_stream_error_round_trips() -> None:
    error = StreamError("abc", "port 1 is closed in the workspace")
    assert decode_extension(error.to_json()) == error
