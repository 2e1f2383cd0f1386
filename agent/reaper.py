"""PID 1 duty: reap orphans and forward signals (docs/design.md, "Reaping").

``waitpid(-1)`` inside the asyncio agent would steal its own children's exit statuses, so
when the agent is PID 1 it becomes a separate, minimal reaper: :func:`exec_init` replaces
the process with a bare interpreter (``python -I -S``) running this file as a script, which
forks and execs the real agent (with ``--no-reap``), then only reaps and forwards signals
and exits with the agent's code.

Why a fresh interpreter rather than a fork of the agent's: whatever the PID 1 process has
imported stays resident for the container's lifetime. A bare ``-I -S`` interpreter running
this file keeps the smallest private footprint Python allows; its code pages are shared
with the agent's interpreter. So this module imports builtin modules only, and the lowest
of them: ``posix`` and ``_signal`` rather than ``os`` and ``signal``, which would bring
``enum``, ``functools``, ``collections`` and ``abc`` (1 MiB of private memory, measured in
docs/benchmarks.md "Agent footprint"). Not even ``__future__`` or ``typing``.
"""

import _signal  # type: ignore[import-not-found]  # signal's C half: no enum
import posix
import sys

FORWARDED: tuple[int, ...] = (
    _signal.SIGTERM,
    _signal.SIGINT,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)


def should_reap(no_reap: bool) -> bool:
    return posix.getpid() == 1 and not no_reap and sys.platform.startswith("linux")


def exit_code(status: int) -> int:
    if posix.WIFSIGNALED(status):
        return 128 + posix.WTERMSIG(status)
    return posix.waitstatus_to_exitcode(status)


def exec_init(agent_argv: list[str]) -> None:
    """Replace this process with the minimal reaper, which runs ``agent_argv``."""
    import os.path  # in the agent's process, which has it already

    script = os.path.abspath(__file__)
    posix.execv(sys.executable, [sys.executable, "-I", "-S", script, *agent_argv])


def run_as_init(argv: list[str]) -> int:
    """Fork/exec ``argv`` (with ``--no-reap``), reap everything, return the child's code."""
    child_argv = [*argv, "--no-reap"]
    pid = posix.fork()
    if pid == 0:  # pragma: no cover - replaced by exec
        try:
            # Its own process group: a signal sent to PID 1's group (Ctrl-C on the
            # container's terminal) then reaches the agent once, forwarded by us, and
            # not twice, which the agent would take for "exit at once".
            posix.setpgid(0, 0)
            posix.execv(child_argv[0], child_argv)
        finally:
            posix._exit(127)

    def forward(signum: int, _frame: object) -> None:
        try:
            posix.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        _signal.signal(signum, forward)
    while True:
        try:
            reaped, status = posix.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if reaped == pid:
            code = exit_code(status)
            # Reap whatever is left without blocking, then leave: PID 1 exiting ends the
            # namespace and the kernel kills the rest.
            while True:
                try:
                    other, _ = posix.waitpid(-1, posix.WNOHANG)
                except ChildProcessError:
                    break
                if other == 0:
                    break
            return code


if __name__ == "__main__":  # pragma: no cover - the reaper process, see exec_init
    sys.exit(run_as_init(sys.argv[1:]))
