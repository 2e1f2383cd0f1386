"""Agent status as Coder computes it (reference §3.10). Pure: takes ``now``."""

from __future__ import annotations

from datetime import datetime, timedelta

from controlplane.store.records import AgentRecord


def agent_status(
    agent: AgentRecord, now: datetime, inactive_timeout: float
) -> tuple[str, datetime | None]:
    """Return (status, disconnected_at to report)."""
    first, last, gone = agent.first_connected_at, agent.last_connected_at, agent.disconnected_at
    if first is None:
        timeout = agent.spec.connection_timeout_seconds
        if timeout > 0 and now - agent.created_at > timedelta(seconds=timeout):
            return "timeout", gone
        return "connecting", gone
    if gone is not None and last is not None and gone > last:
        return "disconnected", gone
    if last is None or now - last > timedelta(seconds=inactive_timeout):
        # The socket stopped refreshing without a recorded close (crash, partition).
        return "disconnected", last
    return "connected", gone
