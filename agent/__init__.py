"""wsagent: a workspace agent daemon speaking Coder's agent API."""
