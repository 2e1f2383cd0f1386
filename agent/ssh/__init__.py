"""The agent's SSH server, reached through ``ssh`` byte streams (docs/protocol.md "SSH").

``connector`` is the stream target the agent wires (light); ``hostkey``/``keygen`` keep the
persistent host key; ``server`` and ``session`` (asyncssh) are imported on the first SSH
connection; ``fdio`` pumps a child's descriptors with flow control.
"""
