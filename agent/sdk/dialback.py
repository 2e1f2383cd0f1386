"""Limits both ends of a dial-back WebSocket share (terminals and byte streams).

The agent dials back to the control plane for each terminal or stream, and the control
plane relays between that socket and the client's. Both ends close a socket with a reason
that must fit a close frame, and both give up on a reader that stopped reading after the
same time, so the rules live here once.
"""

from __future__ import annotations

from typing import Final

# RFC 6455: a close frame's payload is at most 125 bytes, two of which are the code.
MAX_CLOSE_REASON: Final = 123
# A single message that cannot be sent for this long means the reader is gone or
# hopeless: its end is closed so the rest can go on (a terminal may re-attach and gets
# the replay).
STALL_TIMEOUT: Final = 30.0


def truncate_reason(reason: str, limit: int = MAX_CLOSE_REASON) -> str:
    """``reason`` cut to ``limit`` bytes of UTF-8, on a character boundary."""
    data = reason.encode("utf-8")
    if len(data) <= limit:
        return reason
    return data[:limit].decode("utf-8", "ignore")
