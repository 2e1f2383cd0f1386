"""``tcp:<port>`` targets: a connection to the workspace's loopback, IPv4 first, then IPv6.

Only loopback: a stream reaches what the workspace serves to itself, never a host the
workspace can route to (that would make the agent an open proxy into its network).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Final

from agent.errors import StreamTargetError

CONNECT_TIMEOUT: Final = 10.0
LOOPBACKS: Final = ("127.0.0.1", "::1")
# asyncio's StreamReader buffers up to twice its limit before it pauses the socket.
STREAM_LIMIT: Final = 256 * 1024


def _why(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.ENETUNREACH):
        return "address not available"
    return exc.strerror or type(exc).__name__


async def connect_loopback(
    port: int, connect_timeout: float = CONNECT_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect ``port`` on 127.0.0.1, else on ::1. Raises :class:`StreamTargetError` with
    one line saying why neither answered."""
    failures: list[str] = []
    for host in LOOPBACKS:
        try:
            async with asyncio.timeout(connect_timeout):
                return await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        except TimeoutError:
            failures.append(f"{_bracket(host)}:{port}: timed out after {connect_timeout:g}s")
        except OSError as exc:
            failures.append(f"{_bracket(host)}:{port}: {_why(exc)}")
    raise StreamTargetError(f"port {port} is closed in the workspace ({'; '.join(failures)})")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
