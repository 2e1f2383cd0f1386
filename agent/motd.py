"""The message of the day for login terminals (docs/protocol.md, "Message of the day"). Pure
apart from reading two files.

Printed only for login shells (the caller decides), never when ``~/.hushlogin`` exists;
a missing or unreadable file prints nothing. Each line is followed by ``\\r\\n`` because
the bytes go straight to a terminal whose line discipline is not yet translating.
"""

from __future__ import annotations

import os
from typing import Final

# A MOTD is a few lines; a cap keeps a mistaken multi-gigabyte path from stalling a login.
MAX_MOTD_BYTES: Final = 64 * 1024


def format_motd(text: bytes) -> bytes:
    """Every line of ``text`` followed by CRLF (a final line without newline included)."""
    if not text:
        return b""
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line.removesuffix(b"\r") + b"\r\n" for line in lines)


def motd_bytes(path: str, home: str) -> bytes:
    """What a login terminal shows before the shell starts; b"" when nothing is to be shown."""
    if not path:
        return b""
    if home and os.path.exists(os.path.join(home, ".hushlogin")):
        return b""
    if home and (path == "~" or path.startswith("~/")):
        path = home + path[1:]
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MOTD_BYTES)
    except OSError:
        return b""
    return format_motd(data)


def read_motd(path: str, home: str) -> str:
    """The MOTD as text (for callers that format it themselves); "" when nothing is to be
    shown, with the same rules as :func:`motd_bytes`."""
    data = motd_bytes(path, home)
    return data.replace(b"\r\n", b"\n").decode("utf-8", "replace")
