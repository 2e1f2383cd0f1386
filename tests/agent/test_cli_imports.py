"""The agent's import trimming: deferred modules load on first use, and still work."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest

from agent.cli import _Deferred, defer_import


def forget(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_deferred_module_loads_on_first_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    forget(monkeypatch, "colorsys")
    defer_import("colorsys")
    import colorsys

    assert isinstance(sys.modules["colorsys"], _Deferred)  # imported, not yet executed
    spec = importlib.util.find_spec("colorsys")
    assert spec is not None and spec.name == "colorsys"
    assert isinstance(sys.modules["colorsys"], _Deferred)  # finding it did not load it
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    real = sys.modules["colorsys"]
    assert not isinstance(real, _Deferred)
    assert real.rgb_to_hsv is colorsys.rgb_to_hsv  # the stub answers from the real one


def test_a_deferred_submodule_is_bound_on_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import wsgiref

    forget(monkeypatch, "wsgiref.util")
    monkeypatch.delattr(wsgiref, "util", raising=False)
    defer_import("wsgiref.util")
    from wsgiref.util import guess_scheme  # a from-import reads the attribute: real load

    assert guess_scheme({}) == "http"
    real = sys.modules["wsgiref.util"]
    assert not isinstance(real, _Deferred)
    assert wsgiref.util is real
    assert importlib.import_module("wsgiref.util") is real


def test_an_imported_module_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    defer_import("json")
    assert sys.modules["json"] is json


def test_a_missing_module_is_not_deferred(monkeypatch: pytest.MonkeyPatch) -> None:
    forget(monkeypatch, "wsagent_no_such_module")
    defer_import("wsagent_no_such_module")
    assert "wsagent_no_such_module" not in sys.modules
