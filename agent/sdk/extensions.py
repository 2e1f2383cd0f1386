"""wsagent's extension messages on the coordinate socket (docs/protocol.md, "Extension
objects on the coordinate socket").

A real Coder server only ever sends JSON arrays of nodes on the coordinate socket, so a
JSON *object* with a ``type`` field is unambiguous. The server sends requests; the agent
answers listening-port requests on the same socket and dials back for PTY sessions and
byte streams (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from agent.sdk.codec import Obj
from agent.sdk.errors import DecodeError

if TYPE_CHECKING:
    from agent.sdk.workspaceagents import ListeningPort

COORDINATE_ENDPOINT: Final = "coordinate message"
PTY_DIAL_PATH: Final = "/api/v2/workspaceagents/me/pty-dial"
STREAM_DIAL_PATH: Final = "/api/v2/workspaceagents/me/stream-dial"

TYPE_PTY_REQUEST: Final = "pty_request"
TYPE_LISTENING_PORTS_REQUEST: Final = "listening_ports_request"
TYPE_LISTENING_PORTS_RESPONSE: Final = "listening_ports_response"
TYPE_STREAM_REQUEST: Final = "stream_request"
TYPE_STREAM_ERROR: Final = "stream_error"

TARGET_SSH: Final = "ssh"
TARGET_TCP: Final = "tcp"
MAX_PORT: Final = 65535


@dataclass(frozen=True, slots=True)
class Target:
    """What a byte stream connects to inside the workspace: the agent's SSH server, or a
    TCP port on the workspace's loopback. ``str(target)`` is its wire form."""

    kind: str
    port: int = 0

    def __str__(self) -> str:
        return self.kind if self.kind == TARGET_SSH else f"{self.kind}:{self.port}"

    @property
    def proto(self) -> str:
        """The ``conns_by_proto`` key its connections are counted under."""
        return self.kind

    @classmethod
    def parse(cls, text: str) -> Target:
        """``ssh`` or ``tcp:<port>`` with a decimal port in 1-65535; ValueError otherwise."""
        if text == TARGET_SSH:
            return cls(TARGET_SSH)
        kind, sep, port = text.partition(":")
        if kind != TARGET_TCP or not sep:
            raise ValueError(f'target must be "ssh" or "tcp:<port>", got {text[:64]!r}')
        if not port.isascii() or not port.isdigit() or len(port) > 5:
            raise ValueError(f"port must be a decimal number 1-{MAX_PORT}, got {port[:16]!r}")
        number = int(port)
        if not 1 <= number <= MAX_PORT:
            raise ValueError(f"port {number} is out of range 1-{MAX_PORT}")
        return cls(TARGET_TCP, number)


@dataclass(frozen=True, slots=True)
class PTYRequest:
    """Ask the agent to dial back ``PTY_DIAL_PATH?session=<session_id>``; the server then
    sends the reconnecting-PTY init and pipes the user's bytes."""

    session_id: str
    # Where to dial back when the control plane runs several replicas: the asking
    # replica's own URL. Empty: the agent's control-plane URL.
    url: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {"type": TYPE_PTY_REQUEST, "session_id": self.session_id}
        if self.url:
            out["url"] = self.url
        return out

    @classmethod
    def from_obj(cls, o: Obj) -> PTYRequest:
        return cls(session_id=o.text("session_id"), url=o.text("url", ""))


@dataclass(frozen=True, slots=True)
class ListeningPortsRequest:
    request_id: str

    def to_json(self) -> dict[str, Any]:
        return {"type": TYPE_LISTENING_PORTS_REQUEST, "request_id": self.request_id}

    @classmethod
    def from_obj(cls, o: Obj) -> ListeningPortsRequest:
        return cls(request_id=o.text("request_id"))


@dataclass(frozen=True, slots=True)
class ListeningPortsResponse:
    request_id: str
    ports: tuple[ListeningPort, ...] = ()
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": TYPE_LISTENING_PORTS_RESPONSE,
            "request_id": self.request_id,
            "ports": [p.to_json() for p in self.ports],
        }
        if self.error:
            out["error"] = self.error
        return out

    @classmethod
    def from_obj(cls, o: Obj) -> ListeningPortsResponse:
        # Only the control plane decodes these; the agent, which never does, is spared
        # the user-facing models (agent.sdk.workspaceagents).
        from agent.sdk.workspaceagents import ListeningPort

        ports = o.array("ports", lambda v, p: ListeningPort.from_obj(Obj(v, o.endpoint, p)))
        return cls(request_id=o.text("request_id"), ports=tuple(ports), error=o.text("error", ""))


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Ask the agent to connect ``target`` and dial back ``STREAM_DIAL_PATH?session=<id>``
    carrying that connection's bytes. ``client_addr`` is the user's "ip port" as the
    control plane saw it (for SSH_CLIENT), or empty."""

    session_id: str
    target: Target
    client_addr: str = ""
    url: str = ""  # as PTYRequest.url

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": TYPE_STREAM_REQUEST,
            "session_id": self.session_id,
            "target": str(self.target),
        }
        if self.client_addr:
            out["client_addr"] = self.client_addr
        if self.url:
            out["url"] = self.url
        return out

    @classmethod
    def from_obj(cls, o: Obj) -> StreamRequest:
        raw = o.text("target")
        try:
            target = Target.parse(raw)
        except ValueError as exc:
            raise DecodeError(o.endpoint, o.at("target"), str(exc)) from None
        return cls(o.text("session_id"), target, o.text("client_addr", ""), o.text("url", ""))


@dataclass(frozen=True, slots=True)
class StreamError:
    """The agent's answer when it cannot connect a stream's target: it does not dial back.
    ``error`` is one line meant for the user."""

    session_id: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"type": TYPE_STREAM_ERROR, "session_id": self.session_id, "error": self.error}

    @classmethod
    def from_obj(cls, o: Obj) -> StreamError:
        return cls(o.text("session_id"), o.text("error"))


Extension = (
    PTYRequest | ListeningPortsRequest | ListeningPortsResponse | StreamRequest | StreamError
)

_DECODERS: Final[dict[str, Callable[[Obj], Extension]]] = {
    TYPE_PTY_REQUEST: PTYRequest.from_obj,
    TYPE_LISTENING_PORTS_REQUEST: ListeningPortsRequest.from_obj,
    TYPE_LISTENING_PORTS_RESPONSE: ListeningPortsResponse.from_obj,
    TYPE_STREAM_REQUEST: StreamRequest.from_obj,
    TYPE_STREAM_ERROR: StreamError.from_obj,
}


def decode_extension(value: object, endpoint: str = COORDINATE_ENDPOINT) -> Extension | str:
    """Decode an extension object. Returns the type name as a string when it is unknown,
    so the caller can log it once and ignore it."""
    o = Obj(value, endpoint)
    kind = o.text("type")
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return kind
    return decoder(o)
