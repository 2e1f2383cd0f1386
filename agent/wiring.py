"""Plugs the optional components (identity, startup, terminals, app health...) into the
agent. Kept apart from app.py so each component's wiring is one small function here."""

from __future__ import annotations

from agent.app import Agent
from agent.config import AUTH_TOKEN


def wire_components(agent: Agent) -> None:
    """Attach every component to ``agent``. Components never import each other."""
    wire_identity(agent)


def wire_identity(agent: Agent) -> None:
    """Instance-identity auth: exchange the cloud's signed proof for a token each attempt."""
    if agent.config.auth == AUTH_TOKEN:
        return
    # Imported only when needed, so token-auth agents never load the identity code.
    from agent.identity.exchange import IdentityExchange

    agent.set_token_exchange(IdentityExchange(agent.config, agent.client))
