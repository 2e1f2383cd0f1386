"""Decoding the agent end of a dial-back socket (docs/protocol.md, "Reconnecting PTY on the agent").

Pure: bytes in, values out. The stream is a uint16 little-endian length and that many bytes
of JSON init ``{ID, Height, Width, Command}``, then a stream of JSON input objects
``{data, height, width}``. WebSocket message boundaries mean nothing: the init may arrive
split over several messages or in one message together with the first input objects, and
one input object may span several messages (Coder reads the socket as a byte stream).
"""

from __future__ import annotations

import re
from typing import Final

from agent.sdk.errors import DecodeError
from agent.sdk.jsonstream import JSONStream
from agent.sdk.pty import INIT_ENDPOINT, INPUT_ENDPOINT, ReconnectingPTYInit, ReconnectingPTYRequest

MAX_INPUT_VALUE_BYTES: Final = 1 << 20
_MAX_INIT_FRAME: Final = 2 + 0xFFFF
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class DialBackDecoder:
    """Feed the bytes of every received message; read :attr:`init`, get input requests.

    Any malformed input raises :class:`DecodeError`; the connection should then be closed
    (only that connection: the session lives on, as in Coder).
    """

    def __init__(self, max_value_bytes: int = MAX_INPUT_VALUE_BYTES) -> None:
        self.init: ReconnectingPTYInit | None = None
        self._head = bytearray()
        self._stream = JSONStream(INPUT_ENDPOINT, max_value_bytes)

    def feed(self, data: bytes) -> list[ReconnectingPTYRequest]:
        if self.init is None:
            self._head += data
            parsed = ReconnectingPTYInit.split_frame(bytes(self._head))
            if parsed is None:
                if len(self._head) > _MAX_INIT_FRAME:  # pragma: no cover - length is uint16
                    raise DecodeError(INIT_ENDPOINT, "$", "init frame too large")
                return []
            self.init, data = parsed
            self._head = bytearray()
        if not data:
            return []
        return [ReconnectingPTYRequest.from_json(v) for v in self._stream.feed(data)]


def input_bytes(request: ReconnectingPTYRequest) -> bytes:
    """The bytes to write to the PTY for one input request.

    A lone surrogate (``"\\ud800"`` in the JSON) cannot be UTF-8 encoded; Go's decoder turns
    it into U+FFFD, and so do we.
    """
    try:
        return request.data.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", request.data).encode("utf-8")
