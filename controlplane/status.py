"""Agent status as Coder computes it (docs/protocol.md, "Agent status"). Pure: takes ``now``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from agent.sdk.tailnet import DERPMap
from agent.sdk.workspaceagents import DERPRegionLatency
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


def derp_latency(node: Mapping[str, Any] | None, derp_map: DERPMap) -> dict[str, DERPRegionLatency]:
    """``latency`` of ``GET /workspaceagents/{id}``, from the agent's last node.

    Keys ``"<region id>-v4"``/``"-v6"`` in seconds become region *names* in milliseconds;
    a region missing from the server's map is ``Unnamed <id>``. Where a region has both
    families Coder keeps whichever its map iteration visits last; we keep the lower one.
    """
    if not node:
        return {}
    raw = node.get("derp_latency")
    if not isinstance(raw, Mapping):
        return {}
    preferred = node.get("preferred_derp")
    out: dict[str, DERPRegionLatency] = {}
    for key, seconds in raw.items():
        try:
            region_id = int(str(key).split("-", 1)[0])
            millis = float(seconds) * 1000
        except (TypeError, ValueError):
            continue
        region = derp_map.regions.get(region_id)
        name = region.region_name if region is not None else f"Unnamed {region_id}"
        previous = out.get(name)
        if previous is None or millis < previous.latency_ms:
            out[name] = DERPRegionLatency(latency_ms=millis, preferred=preferred == region_id)
    return out
