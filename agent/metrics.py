"""The agent's Prometheus endpoint: a tiny HTTP/1.1 responder on asyncio's own server.

No HTTP framework and no client library: the agent runs on every workspace, and this
costs next to nothing when nobody scrapes it (figures in docs/benchmarks.md, "Metrics").
Each scrape reads the components through callables given by agent/compose.py, so this
module imports no other component. One request per connection; the request head is capped
and timed out, so a stuck or hostile client holds one socket for at most a few seconds.

A port that cannot be bound is one warning in the log: metrics never stop the agent.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Final

import structlog

from agent.sdk.promtext import CONTENT_TYPE, Family, gauge, render

log = structlog.get_logger()

PATH: Final = "/metrics"
HEAD_TIMEOUT: Final = 5.0
WRITE_TIMEOUT: Final = 5.0
MAX_HEAD_BYTES: Final = 8192
# A scrape is a few KiB; more concurrent connections than this are refused at once.
MAX_CONNECTIONS: Final = 16

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

Collect = Callable[[], Iterable[Family]]


def rss_bytes(statm: str = "/proc/self/statm") -> int:
    """Resident set size from /proc/self/statm (second field, in pages); 0 if unreadable."""
    try:
        with open(statm, "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def process_families() -> list[Family]:
    return [
        gauge(
            "wsagent_agent_resident_memory_bytes",
            "Resident set size of the agent process.",
            rss_bytes(),
        )
    ]


class AgentMetrics:
    """Collects families from readers registered by the composition root, in order."""

    def __init__(self) -> None:
        self._collectors: list[Collect] = [process_families]

    def add(self, collect: Collect) -> None:
        self._collectors.append(collect)

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.add(lambda: [gauge(name, help_text, read())])

    def render(self) -> str:
        families: list[Family] = []
        for collect in self._collectors:
            try:
                families.extend(collect())
            except Exception as exc:  # one broken reader must not blank the whole scrape
                log.warning("metrics.collect_failed", error=str(exc))
        return render(families)


def _response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def respond(request_line: bytes, render_page: Callable[[], str]) -> bytes:
    """The whole response to one request line. Pure apart from ``render_page``."""
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n", "text/plain")
    method, target, _ = parts
    if target.split("?", 1)[0] != PATH:
        return _response("404 Not Found", b"not found; try /metrics\n", "text/plain")
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n", "text/plain")
    body = render_page().encode("utf-8")
    response = _response("200 OK", body, CONTENT_TYPE)
    return response[: len(response) - len(body)] if method == "HEAD" else response


class MetricsServer:
    def __init__(self, host: str, port: int, render_page: Callable[[], str]) -> None:
        self.host = host
        self.port = port
        self._render = render_page
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self) -> bool:
        """Listen; on failure log one warning and return False (the agent goes on)."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            log.warning(
                "metrics.listen_failed",
                address=f"{self.host}:{self.port}",
                error=str(exc),
                hint="set CODER_AGENT_METRICS_ADDRESS to another port, or to off",
            )
            return False
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("metrics.listening", address=f"{self.host}:{self.port}", path=PATH)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                return
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    request_line = await reader.readline()
                    # Drain the headers up to the blank line; their content is not needed.
                    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                        del line
            except (TimeoutError, ValueError, OSError):
                return  # too slow, head too long (LimitOverrun is a ValueError), or reset
            writer.write(respond(request_line, self._render))
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await writer.drain()
            except (TimeoutError, OSError):
                return
        finally:
            self._open -= 1
            writer.close()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        except TimeoutError:
            pass
        self._server = None
