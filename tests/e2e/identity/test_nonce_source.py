"""The agent's Azure nonce source against the real control plane and a Coder-like server."""

from __future__ import annotations

import pytest

from agent.identity.nonce import ServerNonceSource
from tests.conftest import ControlPlane
from tests.fakes.metadata import FakeMetadata


@pytest.mark.e2e
async def test_nonces_come_from_the_control_plane_and_differ(control_plane: ControlPlane) -> None:
    source = ServerNonceSource(control_plane.url)
    first, second = await source(), await source()
    assert first and second and first != second
    assert first.isdigit() and len(first) == 10


@pytest.mark.e2e
async def test_a_server_without_the_endpoint_is_asked_once(fake_metadata: FakeMetadata) -> None:
    """A 404 (a Coder server) means no nonces: the agent stops asking."""
    source = ServerNonceSource(fake_metadata.url)
    assert await source() is None
    assert await source() is None
    assert len(fake_metadata.seen("/api/v2/")) == 1


async def test_an_unreachable_server_gives_no_nonce_but_keeps_asking(closed_url: str) -> None:
    source = ServerNonceSource(closed_url, timeout=1.0)
    assert await source() is None
    assert source.supported
