"""The agent's errors, all under :class:`agent.sdk.errors.WsagentError`.

WsagentError                      (agent.sdk.errors)
├── DecodeError                   a body did not match its wire model
├── ApiError                      a Coder error body from the control plane
│   └── UnauthorizedError         HTTP 401
├── ConfigError                   a bad or missing setting; exit code 2 (agent.sdk.errors)
├── TransportError                the control plane could not be reached in time
├── IdentityError                 proving this machine's cloud identity failed
│   ├── NoCloudDetected           auto-detection found no cloud
│   └── MetadataServiceError      the metadata service failed or answered wrongly
├── ProcessError                  a child process could not be started
├── PtyError                      a terminal session failed
└── StreamTargetError             a byte stream's target could not be connected
"""

from __future__ import annotations

from agent.sdk.errors import ApiError, ConfigError, DecodeError, UnauthorizedError, WsagentError

__all__ = [
    "ApiError",
    "ConfigError",
    "DecodeError",
    "IdentityError",
    "MetadataServiceError",
    "NoCloudDetected",
    "ProcessError",
    "PtyError",
    "StreamTargetError",
    "TransportError",
    "UnauthorizedError",
    "WsagentError",
]


class TransportError(WsagentError):
    """A request to the control plane failed below HTTP (connect, TLS, timeout)."""

    def __init__(self, method: str, url: str, reason: str) -> None:
        self.method = method
        self.url = url
        self.reason = reason
        super().__init__(f"{method} {url}: {reason}")


class IdentityError(WsagentError):
    """Fetching or exchanging the cloud instance identity failed."""


class NoCloudDetected(IdentityError):
    """CODER_AGENT_AUTH=auto found neither DMI evidence nor a metadata service."""


class MetadataServiceError(IdentityError):
    """The cloud metadata service was unreachable, slow, or answered with the wrong shape."""


class ProcessError(WsagentError):
    """A child process (startup script, shell) could not be started or controlled."""


class PtyError(WsagentError):
    """A reconnecting terminal session failed or was refused."""


class StreamTargetError(WsagentError):
    """A byte stream's target (a workspace port, the SSH server) could not be connected.
    The message is one line meant for the user at the other end."""
