"""wsagent's extension messages on the coordinate socket (DESIGN.md decision 3).

A real Coder server only ever sends JSON arrays of nodes on the coordinate socket, so a
JSON *object* with a ``type`` field is unambiguous. The server sends requests; the agent
answers listening-port requests on the same socket and dials back for PTY sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agent.sdk.codec import Obj
from agent.sdk.workspaceagents import ListeningPort

COORDINATE_ENDPOINT: Final = "coordinate message"
PTY_DIAL_PATH: Final = "/api/v2/workspaceagents/me/pty-dial"

TYPE_PTY_REQUEST: Final = "pty_request"
TYPE_LISTENING_PORTS_REQUEST: Final = "listening_ports_request"
TYPE_LISTENING_PORTS_RESPONSE: Final = "listening_ports_response"


@dataclass(frozen=True, slots=True)
class PTYRequest:
    """Ask the agent to dial back ``PTY_DIAL_PATH?session=<session_id>``; the server then
    sends the reconnecting-PTY init and pipes the user's bytes."""

    session_id: str

    def to_json(self) -> dict[str, Any]:
        return {"type": TYPE_PTY_REQUEST, "session_id": self.session_id}

    @classmethod
    def from_obj(cls, o: Obj) -> PTYRequest:
        return cls(session_id=o.text("session_id"))


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
        ports = o.array("ports", lambda v, p: ListeningPort.from_obj(Obj(v, o.endpoint, p)))
        return cls(request_id=o.text("request_id"), ports=tuple(ports), error=o.text("error", ""))


Extension = PTYRequest | ListeningPortsRequest | ListeningPortsResponse

_DECODERS: Final[dict[str, Callable[[Obj], Extension]]] = {
    TYPE_PTY_REQUEST: PTYRequest.from_obj,
    TYPE_LISTENING_PORTS_REQUEST: ListeningPortsRequest.from_obj,
    TYPE_LISTENING_PORTS_RESPONSE: ListeningPortsResponse.from_obj,
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
