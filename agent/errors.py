"""The agent's errors, all under :class:`agent.sdk.errors.WsagentError`.

WsagentError                      (agent.sdk.errors)
├── DecodeError                   a body did not match its wire model
├── ApiError                      a Coder error body from the control plane
│   └── UnauthorizedError         HTTP 401
├── ConfigError                   a bad or missing setting; exit code 2 (agent.sdk.errors)
├── TransportError                the control plane could not be reached in time
│   ├── TransportTimeout          no answer within the deadline
│   ├── ConnectRefused            nothing listens there, or the host is unreachable
│   ├── TLSError                  the TLS handshake or the certificate check failed
│   └── ProtocolError             the peer broke HTTP or WebSocket (or closed the socket)
├── IdentityError                 proving this machine's cloud identity failed
│   ├── NoCloudDetected           auto-detection found no cloud
│   └── MetadataServiceError      the metadata service failed or answered wrongly
├── ProcessError                  a child process could not be started
├── PtyError                      a terminal session failed
└── StreamTargetError             a byte stream's target could not be connected
"""

from __future__ import annotations

import errno
from typing import Final

from agent.sdk.errors import ApiError, ConfigError, DecodeError, UnauthorizedError, WsagentError

__all__ = [
    "ApiError",
    "ConfigError",
    "ConnectRefused",
    "DecodeError",
    "IdentityError",
    "MetadataServiceError",
    "NoCloudDetected",
    "ProcessError",
    "ProtocolError",
    "PtyError",
    "StreamTargetError",
    "TLSError",
    "TransportError",
    "TransportTimeout",
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


# The kinds of transport failure, as httpx's own error tree tells them apart; the client
# and the coordinator map the libraries' exceptions onto these at their boundary.


class TransportTimeout(TransportError):
    """The control plane did not answer (or finish answering) within the deadline."""


class ConnectRefused(TransportError):
    """The connection could not be opened: refused, unreachable, or the name did not
    resolve."""


class TLSError(TransportError):
    """The TLS handshake failed: an untrusted or mismatched certificate, or no common
    protocol."""


class ProtocolError(TransportError):
    """The connection opened but the peer broke the protocol: a malformed or cut-short
    answer, a refused WebSocket upgrade without a status, a socket closed mid-stream."""


def transport_kind(exc: BaseException) -> type[TransportError]:
    """The kind of transport failure behind a library's exception, from the standard
    library exceptions in its cause chain (httpx and websockets both keep the socket's
    own error there). :class:`TransportError` itself when the chain says nothing more."""
    # Imported here: as PID 1 the agent's reaper imports this module, and must stay small.
    import socket
    import ssl

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return TransportTimeout
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return TLSError
        if isinstance(current, ConnectionRefusedError | socket.gaierror) or (
            isinstance(current, OSError) and current.errno in _UNREACHABLE
        ):
            return ConnectRefused
        current = current.__cause__ or current.__context__
    return TransportError


_UNREACHABLE: Final = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


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
