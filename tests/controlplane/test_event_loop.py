"""The server's event loop choice: asyncio's unless uvloop is asked for."""

from __future__ import annotations

import asyncio
import sys

import pytest

from controlplane.cli import event_loop_factory


def test_asyncio_by_default_and_on_request() -> None:
    assert event_loop_factory({}) is None
    assert event_loop_factory({"WSAGENT_EVENT_LOOP": "asyncio"}) is None


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    assert event_loop_factory({"WSAGENT_EVENT_LOOP": "auto"}) is None
    with pytest.raises(SystemExit, match="uvloop is not installed"):
        event_loop_factory({"WSAGENT_EVENT_LOOP": "uvloop"})


def test_an_unknown_choice_is_refused() -> None:
    with pytest.raises(SystemExit, match="auto, uvloop or asyncio"):
        event_loop_factory({"WSAGENT_EVENT_LOOP": "trio"})


def test_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    factory = event_loop_factory({"WSAGENT_EVENT_LOOP": "auto"})
    assert factory is uvloop.new_event_loop
    assert event_loop_factory({"WSAGENT_EVENT_LOOP": "uvloop"}) is uvloop.new_event_loop
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
