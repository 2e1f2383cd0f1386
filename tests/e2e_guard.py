"""Keeps ``pytest -m "not e2e"`` the fast suite: a test that starts a process or listens on a
socket (its own server, a fake metadata service, a listener for a scanner to see) must
carry the ``e2e`` mark, and fails with a message saying so if it does not.

Hooked into tests/conftest.py. Only the act of starting is recorded (``Popen``, ``fork``,
``forkpty``, ``listen``); connecting to a closed port or binding a socket without listening
stays a unit test.

Everything under tests/e2e/ is end-to-end by where it lives: it gets the mark here, so a
run with ``-m "not e2e"`` does not even import those modules (a third of the fast suite's
time went into collecting them).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

P = ParamSpec("P")
R = TypeVar("R")

_current: dict[str, set[str] | None] = {"starts": None}

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def _in_e2e_dir(path: Path) -> bool:
    return path == E2E_DIR or E2E_DIR in path.parents


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    markexpr = str(config.getoption("markexpr", "") or "")
    if " ".join(markexpr.split()) == "not e2e" and _in_e2e_dir(collection_path):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _in_e2e_dir(item.path):
            item.add_marker(pytest.mark.e2e)


def _recording(kind: str, original: Callable[P, R]) -> Callable[P, R]:
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        starts = _current["starts"]
        if starts is not None:
            starts.add(kind)
        return original(*args, **kwargs)

    return wrapper


def pytest_configure(config: pytest.Config) -> None:
    install()


def install() -> None:
    """Wrap the ways a test can start a process or a server (once per test process)."""
    if getattr(socket.socket.listen, "_e2e_guard", False):
        return
    listen = _recording("listens on a socket", socket.socket.listen)
    listen._e2e_guard = True  # type: ignore[attr-defined]
    socket.socket.listen = listen  # type: ignore[method-assign]
    subprocess.Popen.__init__ = _recording(  # type: ignore[method-assign, assignment]
        "starts a subprocess", subprocess.Popen.__init__
    )
    os.fork = _recording("forks", os.fork)
    os.forkpty = _recording("forks a PTY", os.forkpty)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, Any, None]:
    if item.get_closest_marker("e2e") is not None:
        yield
        return
    _current["starts"] = set()
    try:
        yield
    finally:
        _current["starts"] = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    # The last test of a worker also tears down the session's fixtures (a PostgreSQL
    # cluster stopped with pg_ctl, say): what they start is not this test's doing.
    if nextitem is not None:
        yield
        return
    saved = _current["starts"]
    _current["starts"] = None
    try:
        yield
    finally:
        _current["starts"] = saved


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    starts = _current["starts"]
    if call.when != "teardown" or not starts:
        return
    report: pytest.TestReport = outcome.get_result()
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid} {', '.join(sorted(starts))} but is not marked e2e: add "
        "@pytest.mark.e2e (or pytestmark = pytest.mark.e2e) so that the fast suite, "
        'pytest -m "not e2e", stays fast and free of processes and servers'
    )
