"""agent.reaper: when to reap, and the exit code passed on from the agent child."""

from __future__ import annotations

import os
import signal

import pytest

from agent import reaper


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (0, 0),
        (3 << 8, 3),  # exit(3)
        (signal.SIGTERM, 128 + signal.SIGTERM),  # killed by a signal: the shell convention
        (signal.SIGKILL, 128 + signal.SIGKILL),
    ],
)
def test_exit_code_from_wait_status(status: int, code: int) -> None:
    assert reaper.exit_code(status) == code


def test_should_reap_only_as_pid_1_without_no_reap() -> None:
    # The test runner is never PID 1; the PID-namespace test covers the positive case.
    assert os.getpid() != 1
    assert not reaper.should_reap(False)
    assert not reaper.should_reap(True)


def test_forwarded_signals_include_the_stop_signals() -> None:
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGHUP} <= set(reaper.FORWARDED)
