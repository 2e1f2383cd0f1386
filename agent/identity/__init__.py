"""Cloud instance identity: detect the cloud, fetch its signed identity, exchange it.

Imported only when CODER_AGENT_AUTH is not ``token``. Nothing here verifies anything: the
agent forwards what the metadata service served and the control plane checks it, so no
cryptography (and no cloud SDK, docs/design.md, "No cloud SDKs in the agent") is needed on
the workspace.
"""
