"""``wsagent terminal``: a small interactive client for ``/workspaceagents/{id}/pty``.

    wsagent terminal --url URL --token USER_TOKEN --agent AGENT_ID [--reconnect UUID]
                     [--command CMD]

On a TTY the local terminal goes to raw mode, so keys (Ctrl-C included) reach the remote
program; the window size is sent at start and on every SIGWINCH. Keystrokes go out as
``{"data": ...}`` messages, output bytes go to stdout unchanged. The exit status is the
remote program's when the session ended with "process exited with code N". Running it
again with the printed ``--reconnect`` re-attaches to the same session and replays its
scrollback.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import os
import re
import signal
import sys
import termios
import tty
import uuid
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agent.sdk.pty import ReconnectingPTYRequest

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
READ_CHUNK: Final = 64 * 1024
_EXITED: Final = re.compile(r"process exited with code (\d+)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsagent terminal",
        description="Open a terminal to a workspace agent through the control plane.",
    )
    p.add_argument("--url", required=True, help="control plane URL, e.g. http://127.0.0.1:3000")
    p.add_argument("--token", required=True, help="user session token")
    p.add_argument("--agent", required=True, help="workspace agent ID")
    p.add_argument("--reconnect", default="", help="session UUID to re-attach (default: new)")
    p.add_argument("--command", default="", help="command to run (default: login shell)")
    return p


def pty_url(base: str, agent_id: str, reconnect: str, rows: int, cols: int, command: str) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + f"/api/v2/workspaceagents/{agent_id}/pty"
    query = {"reconnect": reconnect, "height": rows, "width": cols}
    if command:
        query["command"] = command
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def window_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 24, 80
    return size.lines, size.columns


def exit_status(code: int | None, reason: str) -> int:
    m = _EXITED.fullmatch(reason)
    if code == 1000 and m:
        return min(int(m.group(1)), 255)
    return 0 if code == 1000 else EXIT_FAILURE


class Terminal:
    def __init__(self, ws: ClientConnection, stdin: int, stdout: int) -> None:
        self._ws = ws
        self._stdin = stdin
        self._stdout = stdout
        self._input: asyncio.Queue[ReconnectingPTYRequest | None] = asyncio.Queue(maxsize=64)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._resume: asyncio.Task[None] | None = None

    def _on_stdin(self) -> None:
        try:
            data = os.read(self._stdin, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # End of input (a pipe): stop reading, keep showing output until the end.
            asyncio.get_running_loop().remove_reader(self._stdin)
            return
        text = self._decoder.decode(data)
        if text:
            self._queue(ReconnectingPTYRequest(text))

    def _queue(self, request: ReconnectingPTYRequest) -> None:
        try:
            self._input.put_nowait(request)
        except asyncio.QueueFull:
            # The server is not taking input: stop reading stdin until the queue drains.
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._stdin)
            self._resume = loop.create_task(self._put_and_resume(request))

    async def _put_and_resume(self, request: ReconnectingPTYRequest) -> None:
        await self._input.put(request)
        asyncio.get_running_loop().add_reader(self._stdin, self._on_stdin)

    def on_resize(self) -> None:
        rows, cols = window_size(self._stdout)
        self._queue(ReconnectingPTYRequest("", rows, cols))

    async def _send_input(self) -> None:
        while (request := await self._input.get()) is not None:
            await self._ws.send(request.encode())

    async def run(self) -> tuple[int | None, str]:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._stdin, self._on_stdin)
        sender = asyncio.create_task(self._send_input())
        try:
            async for message in self._ws:
                data = message if isinstance(message, bytes) else message.encode()
                await asyncio.to_thread(_write_all, self._stdout, data)
        except ConnectionClosed:
            pass
        finally:
            loop.remove_reader(self._stdin)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        rcvd = self._ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd else (None, "connection lost")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


async def run(args: argparse.Namespace) -> int:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    rows, cols = window_size(stdout)
    reconnect = args.reconnect or str(uuid.uuid4())
    url = pty_url(args.url, args.agent, reconnect, rows, cols, args.command)
    try:
        ws = await connect(
            url,
            additional_headers={"Coder-Session-Token": args.token},
            compression=None,
            open_timeout=15,
            max_size=1 << 20,
            user_agent_header="wsagent terminal",
        )
    except InvalidStatus as exc:
        body = (exc.response.body or b"").decode("utf-8", "replace").strip()
        print(f"wsagent terminal: {exc.response.status_code}: {body}", file=sys.stderr)
        return EXIT_FAILURE
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        print(f"wsagent terminal: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    loop = asyncio.get_running_loop()
    terminal = Terminal(ws, stdin, stdout)
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
        loop.add_signal_handler(signal.SIGWINCH, terminal.on_resize)
    try:
        code, reason = await terminal.run()
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGWINCH)
        await ws.close()
    print(
        f"\r\n[terminal closed: {reason or code}; re-attach with --reconnect {reconnect}]",
        file=sys.stderr,
    )
    return exit_status(code, reason)


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
