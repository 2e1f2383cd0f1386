"""The ``wsagent`` command: dispatches to the agent or the control plane.

Kept tiny: ``wsagent agent`` must not pay for the control plane's imports.
"""
