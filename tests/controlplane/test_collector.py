"""Counting the collector's pauses (controlplane/collector.py), without collecting."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from controlplane.collector import THRESHOLDS, CollectorPauses, tune_for_serving


def test_pauses_are_counted_per_generation() -> None:
    pauses = CollectorPauses()
    pauses.observe("start", {"generation": 2})
    pauses.observe("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    pauses.observe("start", {"generation": 0})
    pauses.observe("stop", {"generation": 0, "collected": 3, "uncollectable": 0})
    pauses.observe("start", {"generation": 0})
    pauses.observe("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert pauses.collections == [2, 0, 1]
    assert pauses.seconds[1] == 0.0
    assert pauses.seconds[0] >= 0.0 and pauses.seconds[2] >= 0.0
    by_name = {family.name: family for family in pauses.families()}
    collections = by_name["wsagent_server_gc_collections_total"].samples
    assert [(dict(labels)["generation"], n) for _, labels, n in collections] == [
        ("0", 2),
        ("1", 0),
        ("2", 1),
    ]


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*before)
    gc.callbacks[:] = callbacks


@pytest.mark.usefixtures("restored_collector")
def test_tuning_freezes_start_up_objects_and_raises_thresholds() -> None:
    tune_for_serving()
    tune_for_serving()  # idempotent: one callback
    assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() > 0
    assert (
        sum(1 for cb in gc.callbacks if getattr(cb, "__func__", None) is CollectorPauses.observe)
        == 1
    )
