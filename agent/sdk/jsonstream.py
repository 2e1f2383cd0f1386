"""Split a byte stream into top-level JSON values, as Go's json.Decoder reads a socket.

Coder treats the coordinate socket and the PTY input as a byte stream: one value may span
several WebSocket messages, and one message may hold several values. Only objects and
arrays are accepted at the top level, which makes value boundaries unambiguous.
"""

from __future__ import annotations

import re
from typing import Any, Final

from agent.sdk.codec import parse_json
from agent.sdk.errors import DecodeError

DEFAULT_MAX_VALUE_BYTES: Final = 1 << 20
_INTERESTING: Final = re.compile(rb'[\\"\[\]{}]')
_WHITESPACE: Final = b" \t\r\n"


class JSONStream:
    """Feed bytes, get complete values. A value larger than ``max_value_bytes`` or any
    malformed input raises :class:`DecodeError`; the stream is unusable afterwards."""

    def __init__(self, endpoint: str, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> None:
        self._endpoint = endpoint
        self._max = max_value_bytes
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already scanned
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        values: list[Any] = []
        while True:
            end = self._find_end()
            if end is None:
                break
            raw = bytes(self._buf[:end])
            del self._buf[:end]
            self._scan = 0
            values.append(self._decode(raw))
        if len(self._buf) > self._max:
            raise DecodeError(self._endpoint, "$", f"JSON value exceeds {self._max} bytes")
        return values

    def _find_end(self) -> int | None:
        buf = self._buf
        if self._depth == 0:
            start = self._scan
            while start < len(buf) and buf[start] in _WHITESPACE:
                start += 1
            if start:
                del buf[:start]
                self._scan = 0
            if not buf:
                return None
            if buf[0] not in b"[{":
                snippet = bytes(buf[:16])
                raise DecodeError(self._endpoint, "$", f"expected object or array, got {snippet!r}")
        pos = self._scan
        while True:
            if self._escape:
                if pos >= len(buf):
                    self._scan = pos
                    return None
                self._escape = False
                pos += 1
            m = _INTERESTING.search(buf, pos)
            if m is None:
                self._scan = len(buf)
                return None
            ch = m.group()
            pos = m.end()
            if self._in_string:
                if ch == b"\\":
                    self._escape = True
                elif ch == b'"':
                    self._in_string = False
                continue
            if ch == b'"':
                self._in_string = True
            elif ch in (b"[", b"{"):
                self._depth += 1
            elif ch in (b"]", b"}"):
                self._depth -= 1
                if self._depth < 0:
                    raise DecodeError(self._endpoint, "$", "unbalanced closing bracket")
                if self._depth == 0:
                    self._scan = 0
                    return pos

    def _decode(self, raw: bytes) -> Any:
        try:
            return parse_json(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise DecodeError(self._endpoint, "$", f"invalid JSON: {exc}") from None
