"""Pure and pipe-level parts of the SSH server: host key lines, the session's MOTD and
connection variables, and the descriptor pumps' flow control (on real pipes)."""

from __future__ import annotations

import asyncio
import os

import pytest

from agent.sdk.errors import DecodeError
from agent.sdk.hostkeys import SSHHostKey, normalize_public_key
from agent.ssh.fdio import FdReader, FdWriter
from agent.ssh.vars import connection_env, motd_banner

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def test_public_key_lines_are_normalized() -> None:
    assert normalize_public_key(ED25519 + " wsagent host key") == ED25519
    assert SSHHostKey.from_json({"public_key": ED25519}).public_key == ED25519


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ssh-ed25519",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "ssh-ed25519 not*base64",
        # A valid blob for one type under the name of another.
        "ssh-rsa " + ED25519.split()[1],
        "ssh-ed25519 " + "A" * 5000,
    ],
)
def test_bad_public_keys_are_refused(text: str) -> None:
    with pytest.raises(DecodeError):
        normalize_public_key(text)


def test_connection_variables() -> None:
    assert connection_env("192.0.2.7 51234") == {
        "SSH_CLIENT": "192.0.2.7 51234 22",
        "SSH_CONNECTION": "192.0.2.7 51234 127.0.0.1 22",
    }
    assert connection_env("")["SSH_CLIENT"] == "127.0.0.1 0 22"
    assert motd_banner("one\ntwo\n") == b"one\r\ntwo\r\n"


async def test_writer_throttles_its_source_and_delivers_everything_before_eof() -> None:
    read_fd, write_fd = os.pipe()
    events: list[str] = []
    writer = FdWriter(
        write_fd, lambda: events.append("full"), lambda: events.append("drained"), high_water=1024
    )
    data = os.urandom(1 << 20)  # far more than a pipe holds
    writer.write(data)
    writer.write_eof()
    assert events == ["full"]
    got = bytearray()
    reader = FdReader(read_fd, got.extend)
    await asyncio.wait_for(reader.eof.wait(), 10)
    assert bytes(got) == data
    assert events == ["full", "drained"]
    assert writer.closed


async def test_input_that_arrives_while_draining_is_not_lost() -> None:
    """The drained callback may hand the writer more input and the end-of-file at once
    (the channel resumes reading inside it); all of it must reach the child."""
    read_fd, write_fd = os.pipe()
    tail = os.urandom(300_000)
    writer: FdWriter

    def drained() -> None:
        writer.write(tail)
        writer.write_eof()

    writer = FdWriter(write_fd, lambda: None, drained, high_water=1024)
    head = os.urandom(1 << 20)
    writer.write(head)
    got = bytearray()
    reader = FdReader(read_fd, got.extend)
    await asyncio.wait_for(reader.eof.wait(), 10)
    assert bytes(got) == head + tail


async def test_paused_reader_reads_nothing_until_resumed() -> None:
    read_fd, write_fd = os.pipe()
    got = bytearray()
    reader = FdReader(read_fd, got.extend)
    reader.pause()
    os.write(write_fd, b"held")
    await asyncio.sleep(0)
    assert got == b""
    reader.resume()
    os.close(write_fd)
    await asyncio.wait_for(reader.eof.wait(), 10)
    assert got == b"held"
