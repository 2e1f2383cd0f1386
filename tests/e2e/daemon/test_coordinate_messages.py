"""What the server sends on the coordinate socket: peer arrays, extension objects, unknown
types (logged once, ignored) and malformed values (dropped, the socket stays open)."""

from __future__ import annotations

import pytest

from tests.e2e.daemon.conftest import SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e

PEER = {
    "id": 42,
    "as_of": "2026-11-29T04:00:00.123456Z",
    "key": "nodekey:" + "ab" * 32,
    "disco": "discokey:" + "cd" * 32,
    "preferred_derp": 999,
    "derp_latency": {"999-v4": 0.004},
    "addresses": ["fd7a:115c:a1e0:4353:89d9:4ca8:9c42:8d2d/128"],
    "allowed_ips": ["fd7a:115c:a1e0:4353:89d9:4ca8:9c42:8d2d/128"],
    "endpoints": ["127.0.0.1:41641"],
}


async def test_unknown_and_malformed_messages_do_not_break_the_socket(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    daemon = await spawn_daemon(fake_cp.url, agent_token, CODER_AGENT_LOG_LEVEL="debug")
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)

    await fake_cp.send_to_agents([PEER])  # a Coder peer update
    await daemon.wait_for_event("coordinator.peers_updated")
    for _ in range(3):
        await fake_cp.send_to_agents({"type": "teleport_request", "to": "mars"})
    await fake_cp.send_to_agents([{"id": "not a number"}])  # a broken peer array
    await fake_cp.send_to_agents({"no_type": True})  # an object without a type
    await fake_cp.send_to_agents([PEER])  # still served after all that
    await daemon.wait_for_event("coordinator.peers_updated", count=2)

    unknown = daemon.named("coordinator.unknown_message_type")
    assert [e["type"] for e in unknown] == ["teleport_request"]  # logged once, not thrice
    bad = daemon.named("coordinator.bad_message")
    assert len(bad) == 2
    assert any("$[0].id" in e["error"] for e in bad)
    # Nothing of it cost the connection.
    assert len(fake_cp.coordinate_opens) == 1
    assert fake_cp.open_sockets == 1
    assert not daemon.named("agent.run_failed")
    assert daemon.proc.returncode is None


async def test_invalid_json_on_the_socket_reconnects(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """Bytes that are not JSON leave the stream unparseable: the daemon drops the socket
    and dials again, it does not die."""
    daemon = await spawn_daemon(fake_cp.url, agent_token)
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    await fake_cp.send_raw_to_agents(b"}{ not json")
    await fake_cp.wait_for(lambda: len(fake_cp.coordinate_opens) == 2 and fake_cp.open_sockets == 1)
    [failure] = daemon.named("agent.run_failed")
    assert failure["error_type"] == "DecodeError"
    assert daemon.proc.returncode is None
