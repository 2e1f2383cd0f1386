"""The one error the identity verifiers raise: the proof is not acceptable, and why."""

from __future__ import annotations

from agent.sdk.errors import WsagentError


class InvalidIdentity(WsagentError):
    """The instance identity failed verification; ``detail`` says which check failed."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)
