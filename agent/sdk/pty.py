"""Reconnecting-PTY wire format (docs/protocol.md, "The /pty endpoint" and "Reconnecting PTY
on the agent").

Agent side (dial-back socket): a uint16 little-endian length, then that many bytes of
JSON ``{"ID","Height","Width","Command"}``, then a stream of ``{"data","height","width"}``
objects from the user and raw terminal bytes back.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Final

from agent.sdk.codec import Obj, check_int, check_str, parse_json
from agent.sdk.errors import DecodeError

INIT_ENDPOINT: Final = "reconnecting-pty init"
INPUT_ENDPOINT: Final = "reconnecting-pty input"
MAX_INIT_BYTES: Final = 0xFFFF
UINT16_MAX: Final = 0xFFFF


def _dimension(value: object, endpoint: str, path: str) -> int:
    number = check_int(value, endpoint, path)
    if not 0 <= number <= UINT16_MAX:
        raise DecodeError(endpoint, path, f"{number} is not a uint16")
    return number


@dataclass(frozen=True, slots=True)
class ReconnectingPTYInit:
    id: str
    height: int
    width: int
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ID": self.id, "Height": self.height, "Width": self.width, "Command": self.command}

    def encode_frame(self) -> bytes:
        body = json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
        if len(body) > MAX_INIT_BYTES:
            raise ValueError("reconnecting-pty init too large")
        return struct.pack("<H", len(body)) + body

    @classmethod
    def from_json(cls, value: object) -> ReconnectingPTYInit:
        o = Obj(value, INIT_ENDPOINT, fold_case=True)
        session_id = o.text("ID")
        if not session_id:
            raise DecodeError(INIT_ENDPOINT, "$.ID", "empty session ID")
        return cls(
            id=session_id,
            height=_dimension(o.get("Height", 0), INIT_ENDPOINT, "$.Height"),
            width=_dimension(o.get("Width", 0), INIT_ENDPOINT, "$.Width"),
            command=o.text("Command", ""),
        )

    @classmethod
    def split_frame(cls, buf: bytes) -> tuple[ReconnectingPTYInit, bytes] | None:
        """Parse a length-prefixed init from the front of ``buf``.

        Returns ``None`` while the frame is incomplete, else the init and the bytes after it.
        """
        if len(buf) < 2:
            return None
        (length,) = struct.unpack_from("<H", buf)
        if len(buf) < 2 + length:
            return None
        body = buf[2 : 2 + length]
        try:
            value = parse_json(body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise DecodeError(INIT_ENDPOINT, "$", f"invalid JSON: {exc}") from None
        return cls.from_json(value), bytes(buf[2 + length :])


@dataclass(frozen=True, slots=True)
class ReconnectingPTYRequest:
    """One input message: keystrokes and/or a resize (applied only if both dims > 0)."""

    data: str = ""
    height: int = 0
    width: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "height": self.height, "width": self.width}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, value: object) -> ReconnectingPTYRequest:
        o = Obj(value, INPUT_ENDPOINT, fold_case=True)
        return cls(
            data=check_str(o.get("data", ""), INPUT_ENDPOINT, "$.data"),
            height=_dimension(o.get("height", 0), INPUT_ENDPOINT, "$.height"),
            width=_dimension(o.get("width", 0), INPUT_ENDPOINT, "$.width"),
        )

    @property
    def resize(self) -> tuple[int, int] | None:
        if self.height and self.width:
            return self.height, self.width
        return None
