"""Fixtures for the identity tests: the fake metadata service and test key material."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.metadata import FakeMetadata, WrongShapeServer


@pytest.fixture
def fake_metadata() -> Iterator[FakeMetadata]:
    fake = FakeMetadata().start()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def wrong_shape() -> Iterator[WrongShapeServer]:
    server = WrongShapeServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
