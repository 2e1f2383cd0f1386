"""One SSH session channel: a login shell, a command, or the sftp subsystem.

With a PTY (``ssh -t``, interactive logins) the child runs on a new pseudo-terminal as the
session leader with it as controlling terminal; window changes resize it. Without one
(``ssh host cmd``, scp, sftp, IDE installers) stdin, stdout and stderr are three pipes, so
stderr stays separate and every byte passes unchanged. Either way the child runs in its
own process group, registered with the agent's child registry, and the exit status (or
the signal that killed it) goes back to the client once all output has been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import asyncssh
import structlog

from agent.ssh.connector import SessionContext
from agent.ssh.fdio import FdReader, FdWriter
from agent.ssh.vars import motd_banner

if TYPE_CHECKING:
    from asyncssh import SSHServerChannel

log = structlog.get_logger()

DEFAULT_TERM: Final = "xterm-256color"
# After the child exits, how long to wait for a PTY's last output when a background
# process still holds the terminal open (sshd closes at once; this keeps the tail).
PTY_DRAIN_SECONDS: Final = 0.5
AGENT_SOCKET_WAIT_TURNS: Final = 5


def _controlling_tty() -> None:  # runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_size(fd: int, cols: int, rows: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ShellSession(asyncssh.SSHServerSession[bytes]):
    def __init__(self, context: SessionContext, conn_env: Mapping[str, str]) -> None:
        self._context = context
        self._conn_env = conn_env  # SSH_CLIENT, SSH_CONNECTION
        self._chan: SSHServerChannel[bytes] | None = None
        self._term = ""
        self._size = (80, 24)
        self._pty = False
        self._command: str | None = None
        self._argv: list[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[FdReader] = []
        self._stdin: FdWriter | None = None
        self._master = -1
        self._early_input: list[bytes] = []
        self._early_eof = False

    # ---------------------------------------------------------------- requests

    def connection_made(self, chan: SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: object
    ) -> bool:
        self._pty = True
        self._term = term_type or DEFAULT_TERM
        cols, rows = term_size[0] or 80, term_size[1] or 24
        self._size = (cols, rows)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem == "sftp" and self._context.sftp_server:
            self._argv = [self._context.sftp_server]
            return True
        log.info("ssh.subsystem_refused", subsystem=subsystem[:64])
        return False

    def session_started(self) -> None:
        self._task = asyncio.create_task(self._run_guarded(), name="ssh.session")

    async def _run_guarded(self) -> None:
        # A bug here must end this session with an error, not leave the client waiting.
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("ssh.session_failed", error=str(exc), exc_info=exc)
            if self._chan is not None:
                with contextlib.suppress(Exception):
                    self._chan.exit(255)

    # ---------------------------------------------------------------- data in

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self._stdin is not None:
            self._stdin.write(data)
            return
        # Input that came before the child exists: keep this much, and let asyncssh hold
        # the rest (within the channel's window) until the child takes it.
        self._early_input.append(data)
        assert self._chan is not None
        self._chan.pause_reading()

    def eof_received(self) -> bool:
        # Pipes: the child reads end-of-file. A PTY has no end-of-file to pass on (sshd
        # too leaves it open); the shell ends when told to.
        if self._stdin is None:
            self._early_eof = True
        elif not self._pty:
            self._stdin.write_eof()
        return True  # half-open: output keeps flowing

    def signal_received(self, signal_name: str) -> None:
        signum = getattr(signal, f"SIG{signal_name}", None)
        if self._proc is not None and isinstance(signum, signal.Signals):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signum)

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self._size = (width or 80, height or 24)
        if self._master >= 0:
            _set_size(self._master, *self._size)

    def break_received(self, msec: int) -> bool:
        if self._master >= 0:
            with contextlib.suppress(OSError):
                termios.tcsendbreak(self._master, 0)
            return True
        return False

    # ---------------------------------------------------------------- flow control

    def pause_writing(self) -> None:
        for reader in self._readers:
            reader.pause()

    def resume_writing(self) -> None:
        for reader in self._readers:
            reader.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._proc is not None and self._proc.returncode is None:
            for signum in (signal.SIGHUP, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._proc.pid, signum)
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # ---------------------------------------------------------------- the child

    def _environment(self, agent_socket: str | None) -> dict[str, str]:
        assert self._chan is not None
        env = dict(self._context.environment())
        # What the client sent (LANG, LC_*, or anything with SendEnv): the user's own.
        for key, value in self._chan.get_environment().items():
            if isinstance(key, str) and isinstance(value, str) and "=" not in key:
                env[key] = value
        env.update(self._conn_env)
        env["TERM"] = self._term if self._pty else env.get("TERM", "dumb")
        if agent_socket:
            env["SSH_AUTH_SOCK"] = agent_socket
        if self._command is not None:
            env["SSH_ORIGINAL_COMMAND"] = self._command
        return env

    def _argv_for(self) -> list[str]:
        if self._argv is not None:
            return self._argv
        shell = self._context.shell()
        if self._command is not None:
            return [shell, "-c", self._command]
        return [shell, "-l"]

    async def _agent_socket(self) -> str | None:
        # The client's agent request (if any) came before the shell/exec request, and
        # asyncssh finishes it in a task a couple of loop turns later.
        assert self._chan is not None
        for _ in range(AGENT_SOCKET_WAIT_TURNS):
            path = self._chan.get_agent_path()
            if path:
                return path
            await asyncio.sleep(0)
        return self._chan.get_agent_path()

    async def _run(self) -> None:
        chan = self._chan
        assert chan is not None
        env = self._environment(await self._agent_socket())
        argv = self._argv_for()
        cwd = self._context.directory() or self._context.home()
        if not Path(cwd).is_dir():  # noqa: ASYNC240 (one stat, like the PTY plane's)
            cwd = "/"
        try:
            if self._pty:
                proc = await self._spawn_pty(argv, env, cwd)
            else:
                proc = await self._spawn_pipes(argv, env, cwd)
        except (OSError, ValueError) as exc:
            # ValueError: a NUL byte in the command or in an environment variable the
            # client sent (SSH strings may hold one; exec cannot).
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            log.warning("ssh.start_failed", argv0=argv[0], error=str(exc))
            chan.write_stderr(f"wsagent: cannot start {argv[0]}: {why}\r\n".encode())
            chan.exit(127)
            return
        self._proc = proc
        self._context.register_group(proc.pid, "ssh session")
        self._take_early_input()
        try:
            code = await proc.wait()
            await self._drain()
        finally:
            self._context.unregister_group(proc.pid)
            self._close_fds()
        if code < 0:
            name = signal.Signals(-code).name.removeprefix("SIG")
            chan.exit_with_signal(name, False, "")
        else:
            chan.exit(code)

    async def _spawn_pty(
        self, argv: list[str], env: dict[str, str], cwd: str
    ) -> asyncio.subprocess.Process:
        chan = self._chan
        assert chan is not None
        master, slave = os.openpty()
        try:
            _set_size(slave, *self._size)
            env["SSH_TTY"] = os.ttyname(slave)
            if self._command is None and self._argv is None:
                home = self._context.home()
                if not (Path(home) / ".hushlogin").exists():
                    banner = motd_banner(self._context.motd())
                    if banner:
                        chan.write(banner)
            proc = await asyncio.create_subprocess_exec(
                *self._context.launch_argv(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_controlling_tty,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self._readers = [FdReader(master, chan.write)]
        self._stdin = FdWriter(master, chan.pause_reading, chan.resume_reading, close_fd=False)
        return proc

    async def _spawn_pipes(
        self, argv: list[str], env: dict[str, str], cwd: str
    ) -> asyncio.subprocess.Process:
        chan = self._chan
        assert chan is not None
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._context.launch_argv(argv),
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        self._readers = [FdReader(out_r, chan.write), FdReader(err_r, chan.write_stderr)]
        self._stdin = FdWriter(in_w, chan.pause_reading, chan.resume_reading)
        return proc

    def _take_early_input(self) -> None:
        assert self._stdin is not None and self._chan is not None
        for data in self._early_input:
            self._stdin.write(data)
        self._early_input.clear()
        if self._early_eof and not self._pty:
            self._stdin.write_eof()
        self._chan.resume_reading()

    async def _drain(self) -> None:
        """Send the output that is left: pipes until end-of-file (as sshd does: a
        background job holding stdout keeps the session open), a PTY briefly."""
        if self._pty:
            for reader in self._readers:
                reader.drain_now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(r.eof.wait() for r in self._readers)), PTY_DRAIN_SECONDS
                )
            return
        await asyncio.gather(*(r.eof.wait() for r in self._readers))

    def _close_fds(self) -> None:
        for reader in self._readers:
            reader.close()
        if self._stdin is not None:
            self._stdin.close()
        self._master = -1
