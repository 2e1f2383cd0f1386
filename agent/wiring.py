"""Plugs the optional components (identity, startup, terminals, app health...) into the
agent. Kept apart from app.py so each component's wiring is one small function here."""

from __future__ import annotations

from agent.app import Agent


def wire_components(agent: Agent) -> None:
    """Attach every component to ``agent``. Components never import each other."""
    del agent
