"""The user's side of the workspace data plane: ``wsagent login``, ``port-forward``,
``ssh`` (interactive and ``--stdio``) and ``config-ssh``.

``session`` resolves the control plane URL and token (flags, then Coder's CLI variables,
then the 0600 session file ``wsagent login`` writes); ``api`` finds a workspace's agent;
``stream`` opens ``/workspaceagents/{id}/stream`` and splices it with a local connection.
Only the agent's base dependencies (httpx, websockets) are used, so these commands work
wherever the agent is installed.
"""
