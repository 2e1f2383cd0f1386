"""wsagent: a workspace agent daemon speaking Coder's agent API."""

__version__ = "0.1.0"
