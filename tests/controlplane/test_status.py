"""Pure: agent status (docs/protocol.md, "Agent status") and DERP latency from a node, with
``now`` given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controlplane.config import derp_map_for
from controlplane.status import agent_status, derp_latency
from controlplane.store.records import AgentRecord, AgentSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


def agent(
    timeout: int = 10,
    first_connected_at: datetime | None = None,
    last_connected_at: datetime | None = None,
    disconnected_at: datetime | None = None,
) -> AgentRecord:
    return AgentRecord(
        id="a",
        workspace_id="w",
        build_number=1,
        resource_id="r",
        created_at=T0,
        updated_at=T0,
        spec=AgentSpec(name="main", connection_timeout_seconds=timeout),
        first_connected_at=first_connected_at,
        last_connected_at=last_connected_at,
        disconnected_at=disconnected_at,
    )


@pytest.mark.parametrize(
    ("record", "now", "expected"),
    [
        (agent(), T0 + 10 * S, ("connecting", None)),  # not yet past the timeout
        (agent(), T0 + 11 * S, ("timeout", None)),
        (agent(timeout=0), T0 + 3600 * S, ("connecting", None)),  # 0 = never times out
        (
            agent(first_connected_at=T0, last_connected_at=T0 + 20 * S),
            T0 + 25 * S,
            ("connected", None),
        ),
        (  # stale: no refresh for longer than the inactivity timeout (6 s)
            agent(first_connected_at=T0, last_connected_at=T0 + 20 * S),
            T0 + 27 * S,
            ("disconnected", T0 + 20 * S),
        ),
        (
            agent(
                first_connected_at=T0,
                last_connected_at=T0 + 20 * S,
                disconnected_at=T0 + 21 * S,
            ),
            T0 + 22 * S,
            ("disconnected", T0 + 21 * S),
        ),
        (  # reconnected after a disconnect
            agent(
                first_connected_at=T0,
                last_connected_at=T0 + 30 * S,
                disconnected_at=T0 + 21 * S,
            ),
            T0 + 31 * S,
            ("connected", T0 + 21 * S),
        ),
        (  # timeout only applies before the first connection
            agent(timeout=1, first_connected_at=T0 + 50 * S, last_connected_at=T0 + 50 * S),
            T0 + 51 * S,
            ("connected", None),
        ),
    ],
)
def test_agent_status(record: AgentRecord, now: datetime, expected: tuple[str, object]) -> None:
    assert agent_status(record, now, inactive_timeout=6.0) == expected


def test_derp_latency_tolerates_garbage_and_unknown_regions() -> None:
    derp = derp_map_for("http://127.0.0.1:3000")
    node = {
        "preferred_derp": 7,
        "derp_latency": {"7-v4": 0.5, "x-v4": 1, "999-v6": "fast", "999-v4": 0.003},
    }
    got = {k: (v.latency_ms, v.preferred) for k, v in derp_latency(node, derp).items()}
    assert got == {"Unnamed 7": (500.0, True), "Coder Embedded Relay": (3.0, False)}
    assert derp_latency(None, derp) == {}
    assert derp_latency({"derp_latency": None}, derp) == {}
