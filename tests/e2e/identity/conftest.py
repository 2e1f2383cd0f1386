"""Fixtures for the identity tests: the fake metadata service and test key material."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controlplane.identity.config import IdentityConfig
from tests.fakes.cloudkeys import pem
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


def identity_config(fake: FakeMetadata, **overrides: object) -> IdentityConfig:
    """Server settings that trust exactly the fake's test keys (none of the real clouds')."""
    values: dict[str, object] = {
        "aws_default_certs": False,
        "aws_extra_certs": (fake.aws.cert_pem,),
        "google_keys_url": fake.google_keys_url,
        "azure_roots": (pem(fake.azure.root),),
        "azure_intermediates": (pem(fake.azure.intermediate),),
    }
    values.update(overrides)
    return IdentityConfig(**values)  # type: ignore[arg-type]
