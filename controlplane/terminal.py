"""``wsagent terminal``: a small interactive client for ``/workspaceagents/{id}/pty``.

    wsagent terminal --url URL --token USER_TOKEN --agent AGENT_ID
                     [--reconnect UUID|last] [--command CMD]

On a TTY the local terminal goes to raw mode, so keys (Ctrl-C included) reach the remote
program; the window size is sent at start and on every SIGWINCH. Keystrokes go out as
``{"data": ...}`` messages, output bytes go to stdout unchanged. The exit status is the
remote program's when the session ended with "process exited with code N".

The session outlives the connection (the agent keeps it for its idle timeout), so the
command that re-attaches to it, id included, is printed when the session starts and again
when the window is closed or the client is stopped. ``--reconnect last`` re-attaches to
the last session this user opened on that agent from this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import sys
import termios
import tty
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agent.sdk.pty import ReconnectingPTYRequest
from controlplane import termsessions
from controlplane.cliargs import OneLineParser

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
READ_CHUNK: Final = 64 * 1024
_EXITED: Final = re.compile(r"process exited with code (\d+)")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="wsagent terminal",
        description="Open a terminal to a workspace agent through the control plane.",
    )
    p.add_argument("--url", required=True, help="control plane URL, e.g. http://127.0.0.1:3000")
    p.add_argument("--token", required=True, help="user session token")
    p.add_argument("--agent", required=True, help="workspace agent ID")
    p.add_argument(
        "--reconnect",
        default="",
        help="session ID to re-attach, or 'last' for the last one opened here (default: new)",
    )
    p.add_argument("--command", default="", help="command to run (default: login shell)")
    return p


class UsageError(Exception):
    """A bad flag value or an unusable standard input: one line, before connecting."""


def check_args(args: argparse.Namespace) -> None:
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--url {args.url!r} is not an http:// or https:// URL"
            f" (for example http://{args.url.split('://')[-1] or '127.0.0.1:3000'})"
        )
    try:
        uuid.UUID(args.agent)
    except ValueError:
        raise UsageError(f"--agent {args.agent!r} is not an agent ID (a UUID)") from None
    if args.reconnect and args.reconnect != "last":
        try:
            uuid.UUID(args.reconnect)
        except ValueError:
            raise UsageError(
                f"--reconnect {args.reconnect!r} is neither a session ID (a UUID) nor 'last'"
            ) from None


def check_stdin(fd: int) -> None:
    """The client reads keys with the event loop, which can wait on a terminal, a pipe or a
    socket, but not on a file or /dev/null."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise UsageError("standard input is closed; run it in a terminal") from None
    if os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = "a file"
    raise UsageError(
        f"standard input ({name}) is not a terminal; run it in a terminal, or pipe keys into it"
    )


# Words for the close codes a user may see (RFC 6455 section 7.4.1).
CLOSE_WORDS: Final = {
    1000: "closed",
    1001: "control plane shutting down",
    1006: "connection lost",
    1008: "refused by the control plane",
    1011: "control plane error",
    1012: "control plane restarting",
    1013: "try again later",
}


def close_words(code: int | None, reason: str) -> str:
    """Why the terminal closed, in words, never a bare number or an enum's repr."""
    if reason == "server shutting down":
        return "control plane shutting down"
    if reason:
        return reason
    if code is None:
        return "connection lost"
    return CLOSE_WORDS.get(code, f"closed (code {code})")


def reattach_command(argv: Sequence[str], session_id: str) -> str:
    """The command line that re-attaches: the user's own, with ``--reconnect <id>``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--reconnect":
            skip = True
            continue
        if arg.startswith("--reconnect="):
            continue
        out.append(arg)
    return shlex.join([*_program(), "terminal", *out, "--reconnect", session_id])


def _program() -> list[str]:
    beside = Path(sys.executable).parent / "wsagent"
    on_path = shutil.which("wsagent")
    if on_path and (not beside.exists() or Path(on_path).resolve() == beside.resolve()):
        return ["wsagent"]
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "wsagent"]


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


async def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    check_args(args)
    check_stdin(stdin)
    state = termsessions.state_file()
    reconnect = args.reconnect
    if reconnect == "last":
        found = termsessions.last_session(state, args.url, args.agent)
        if found is None:
            raise UsageError(f"no earlier session on agent {args.agent} at {args.url} to re-attach")
        reconnect = found
    reconnect = reconnect or str(uuid.uuid4())
    rows, cols = window_size(stdout)
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
    termsessions.remember(state, args.url, args.agent, reconnect)
    hint = f"re-attach with --reconnect last, or: {reattach_command(argv, reconnect)}"
    _say(f"[session {reconnect}; {hint}]")
    loop = asyncio.get_running_loop()
    terminal = Terminal(ws, stdin, stdout)
    saved = None
    if os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
        loop.add_signal_handler(signal.SIGWINCH, terminal.on_resize)
    stopped: list[int] = []
    closing: list[asyncio.Task[None]] = []

    def stop(signum: int) -> None:
        # The window was closed (SIGHUP) or we were told to stop: leave the session
        # running on the agent and say how to get back to it.
        stopped.append(signum)
        closing.append(loop.create_task(ws.close()))

    stop_signals = [signal.SIGTERM, signal.SIGHUP] + ([] if saved else [signal.SIGINT])
    for signum in stop_signals:
        loop.add_signal_handler(signum, stop, signum)
    try:
        code, reason = await terminal.run()
    finally:
        if saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        for signum in [signal.SIGWINCH, *stop_signals]:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await ws.close()
    if stopped:
        name = signal.Signals(stopped[0]).name
        why = "window closed (SIGHUP)" if stopped[0] == signal.SIGHUP else f"stopped ({name})"
        _say(f"[terminal {why}; the session keeps running: {hint}]")
        return 128 + stopped[0]
    words = close_words(code, reason)
    if _EXITED.fullmatch(reason):
        _say(f"[terminal closed: {words}]")
    else:
        _say(f"[terminal closed: {words}; {hint}]")
    return exit_status(code, reason)


def _say(line: str) -> None:
    """A line for the user on stderr; \r\n because the terminal may be in raw mode, and
    never an error if the window is already gone."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"\r\n{line}\r\n")
        sys.stderr.flush()


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        return asyncio.run(run(args, argv))
    except UsageError as exc:
        print(f"wsagent terminal: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
