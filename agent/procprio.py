"""Process priority for the agent's children (like Coder's ``CODER_PROC_PRIO_MGMT``).

Opt-in, Linux only: with ``CODER_PROC_PRIO_MGMT`` set (to anything but ``""``, ``0``,
``false``, ``no``, ``off``) every child the agent starts (startup and shutdown scripts,
terminals, metadata commands, SSH sessions) runs with ``nice`` +5 and ``oom_score_adj``
998, so under memory pressure the kernel's OOM killer takes a runaway build rather than the
agent, and a busy build does not starve it of CPU. The agent's own values do not change.

The child sets them itself, before its program starts, so whatever it forks inherits them
(a parent adjusting a child after the fact races the child's own forks): its argv is
prefixed with a small ``/bin/sh`` prelude that writes ``/proc/self/oom_score_adj`` and
``exec``s the program through ``nice -n 5``. Raising one's own oom_score_adj and niceness
needs no privilege; where ``/proc/self/oom_score_adj`` cannot be written (a read-only /proc)
or there is no ``nice`` program, the feature is off with one log line.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger()

ENV: Final = "CODER_PROC_PRIO_MGMT"
CHILD_NICE: Final = 5
CHILD_OOM_SCORE_ADJ: Final = 998
_OFF: Final = frozenset({"", "0", "false", "no", "off"})
# $0 names the prelude in ps; "$@" is the child's argv.
PRELUDE: Final = (
    f"echo {CHILD_OOM_SCORE_ADJ} > /proc/self/oom_score_adj 2>/dev/null; "
    f'exec "$0" -n {CHILD_NICE} "$@"'
)


class ChildPriority:
    """Rewrites a child's argv so the child lowers its own priority, or leaves it be."""

    def __init__(self, nice_program: str | None = None, shell: str = "/bin/sh") -> None:
        self.nice_program = nice_program
        self.shell = shell

    @property
    def enabled(self) -> bool:
        return self.nice_program is not None

    def argv(self, argv: Sequence[str]) -> list[str]:
        if self.nice_program is None:
            return list(argv)
        return [self.shell, "-c", PRELUDE, self.nice_program, *argv]

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str],
        *,
        platform: str = sys.platform,
        proc_self: Path = Path("/proc/self"),
    ) -> ChildPriority:
        if environ.get(ENV, "").strip().lower() in _OFF:
            return cls()
        if not platform.startswith("linux"):
            log.warning("procprio.unavailable", reason="process priority is Linux only")
            return cls()
        nice = shutil.which("nice", path=environ.get("PATH") or None)
        if nice is None:
            log.warning("procprio.unavailable", reason="no nice program on PATH")
            return cls()
        try:
            # Writing back the current value proves the file is writable without changing
            # anything for the agent itself.
            adj = proc_self / "oom_score_adj"
            adj.write_text(adj.read_text())
        except OSError as exc:
            log.warning(
                "procprio.unavailable", reason=f"cannot write oom_score_adj: {exc.strerror}"
            )
            return cls()
        log.info(
            "procprio.enabled", child_nice=f"+{CHILD_NICE}", child_oom_score_adj=CHILD_OOM_SCORE_ADJ
        )
        return cls(nice)
