"""PID 1 duty: reap orphans and forward signals (docs/design.md, "Reaping").

``waitpid(-1)`` inside the asyncio agent would steal its own children's exit statuses, so
when the agent is PID 1 it becomes a separate, minimal reaper: :func:`exec_init` replaces
the process with a bare interpreter (``python -I -S``) running this file as a script, which
forks and execs the real agent (with ``--no-reap``), then only reaps and forwards signals
and exits with the agent's code.

Why a fresh interpreter rather than a fork of the agent's: whatever the PID 1 process has
imported stays resident for the container's lifetime. A bare ``-I -S`` interpreter running
this file (``os``, ``signal`` and ``sys`` only: builtin modules) keeps the smallest private
footprint Python allows; its code pages are shared with the agent's interpreter. So this
module imports nothing else, not even ``typing``.
"""

from __future__ import annotations

import os
import signal
import sys

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def should_reap(no_reap: bool) -> bool:
    return os.getpid() == 1 and not no_reap and sys.platform.startswith("linux")


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def exec_init(agent_argv: list[str]) -> None:
    """Replace this process with the minimal reaper, which runs ``agent_argv``."""
    script = os.path.abspath(__file__)
    os.execv(sys.executable, [sys.executable, "-I", "-S", script, *agent_argv])


def run_as_init(argv: list[str]) -> int:
    """Fork/exec ``argv`` (with ``--no-reap``), reap everything, return the child's code."""
    child_argv = [*argv, "--no-reap"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - replaced by exec
        try:
            # Its own process group: a signal sent to PID 1's group (Ctrl-C on the
            # container's terminal) then reaches the agent once, forwarded by us, and
            # not twice, which the agent would take for "exit at once".
            os.setpgid(0, 0)
            os.execv(child_argv[0], child_argv)
        finally:
            os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if reaped == pid:
            code = exit_code(status)
            # Reap whatever is left without blocking, then leave: PID 1 exiting ends the
            # namespace and the kernel kills the rest.
            while True:
                try:
                    other, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if other == 0:
                    break
            return code


if __name__ == "__main__":  # pragma: no cover - the reaper process, see exec_init
    sys.exit(run_as_init(sys.argv[1:]))
