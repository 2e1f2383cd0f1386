"""A child process on a pseudo-terminal: spawn, resize, signal, reap.

``spawn`` forks on a new PTY (``pty.fork``: session leader, controlling terminal) and
execs; exec errors come back to the parent over a close-on-exec pipe. The child never
returns into the agent's code: whatever happens between fork and exec ends in
``os._exit``, so a bad command cannot leave a second copy of the agent running its tasks,
logs and shutdown hooks in the user's terminal. From then on this module owns the master
fd and the pid: the fd is
switched to non-blocking for ``loop.add_reader`` and the exit status is collected with a
pidfd watched by the event loop, so nothing blocks the loop and no ``waitpid(-1)`` steals
another component's child (docs/design.md, "Reaping").
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import termios
from collections.abc import Mapping, Sequence
from typing import Final

import structlog

from agent.errors import PtyError

log = structlog.get_logger()

REAP_POLL_SECONDS: Final = 0.05


def exit_code_of(status: int) -> int:
    """A shell-style exit code: the code, or 128 + signal number."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


class PtyChild:
    """The master side of one PTY and the process group running on it."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        # pty.fork() makes the child a session leader, so its pid is its process group.
        self.pgid = pid
        self.fd = fd
        self.exit_code: int | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd = -1
        self._poll: asyncio.TimerHandle | None = None
        os.set_blocking(fd, False)
        self._watch()

    # ------------------------------------------------------------------ reaping

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._poll = loop.call_later(REAP_POLL_SECONDS, self._poll_exit)
            return
        loop.add_reader(self._pidfd, self._try_reap)

    def _poll_exit(self) -> None:
        if not self._try_reap():
            self._poll = asyncio.get_running_loop().call_later(REAP_POLL_SECONDS, self._poll_exit)

    def _try_reap(self) -> bool:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it (a PID 1 reaper in this process would be a bug, but do
            # not hang the session over it).
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return False
        self._stop_watching()
        self.exit_code = exit_code_of(status)
        if not self._exited.done():
            self._exited.set_result(self.exit_code)
        return True

    def _stop_watching(self) -> None:
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None

    @property
    def exited(self) -> bool:
        return self._exited.done()

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    # ------------------------------------------------------------------ control

    def resize(self, rows: int, cols: int) -> None:
        if self.fd < 0:
            return
        try:
            fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError as exc:
            # Coder only logs a failed resize; the session goes on.
            log.debug("pty.resize_failed", pid=self.pid, error=str(exc))

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def close_fd(self) -> None:
        # -1 after close so a reused descriptor number can never be read or written by us.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def terminate(self, grace: float) -> int:
        """HUP and TERM the group, KILL it after ``grace``; returns the exit code."""
        if not self.exited:
            self.signal_group(signal.SIGHUP)
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.wait(), timeout=grace)
            except TimeoutError:
                log.warning("pty.kill_after_grace", pid=self.pid, grace=grace)
                self.signal_group(signal.SIGKILL)
        return await self.wait()


def check_exec_args(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> None:
    """Refuse what ``execve`` cannot take, before anything forks."""
    if not argv or not argv[0]:
        raise PtyError("empty command")
    texts = [*argv, *env.keys(), *env.values(), cwd or ""]
    if any("\0" in text for text in texts):
        raise PtyError("the command, its environment or directory contains a NUL byte")
    if any(not key or "=" in key for key in env):
        raise PtyError("an environment variable name is empty or contains '='")


def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | None, rows: int, cols: int
) -> PtyChild:
    """Start ``argv`` on a new PTY. Raises :class:`PtyError` when it cannot start."""
    import pty
    import shutil

    check_exec_args(argv, env, cwd)
    if cwd is not None and not os.path.isdir(cwd):
        cwd = None
    executable = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if executable is None:
        raise PtyError(f"start {argv[0]!r}: command not found or not executable")
    err_read, err_write = os.pipe()  # both close-on-exec (PEP 446)
    try:
        pid, fd = pty.fork()
    except OSError as exc:
        os.close(err_read)
        os.close(err_write)
        raise PtyError(f"start {argv[0]!r}: {exc}") from exc
    if pid == 0:  # pragma: no cover - the child execs or exits; coverage cannot follow
        _exec_child(executable, argv, env, cwd, rows or 24, cols or 80, err_read, err_write)
    os.close(err_write)
    try:
        failure = _read_all(err_read)  # EOF at exec: the write end closes on exec
    finally:
        os.close(err_read)
    if failure:
        os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise PtyError(f"start {argv[0]!r}: {failure.decode('utf-8', 'replace')}")
    return PtyChild(pid, fd)


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 1024):
        data += chunk[: 4096 - len(data)]
    return data


def _exec_child(
    executable: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    rows: int,
    cols: int,
    err_read: int,
    err_write: int,
) -> None:
    """The child between fork and exec: it leaves by exec or ``os._exit``, never by
    returning or raising into the agent's code."""
    try:
        os.close(err_read)
        # stdin/stdout/stderr are the PTY's slave side (pty.fork set them up).
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        # Python ignores SIGPIPE and SIGXFSZ; a shell and its programs expect the defaults.
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
        os.closerange(3, err_write)
        os.closerange(err_write + 1, max(err_write + 1, os.sysconf("SC_OPEN_MAX")))
        if cwd is not None:
            os.chdir(cwd)
        os.execve(executable, list(argv), dict(env))
    except BaseException as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
        with contextlib.suppress(BaseException):
            os.write(err_write, reason.encode("utf-8", "replace"))
    finally:
        os._exit(127)
