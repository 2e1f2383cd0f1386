"""The reference control plane: the server half of the agent API."""
