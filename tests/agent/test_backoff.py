"""agent.backoff: jittered exponential delays, pinned with a seeded random source."""

from __future__ import annotations

import random

import pytest

from agent.backoff import Backoff


def test_delays_double_from_floor_to_ceiling_with_equal_jitter() -> None:
    backoff = Backoff(0.1, 10.0, rng=random.Random(1))
    bases = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    for base in bases:
        delay = backoff.next_delay()
        assert base / 2 <= delay <= base
    assert backoff.at_ceiling


def test_reset_starts_again_from_the_floor() -> None:
    backoff = Backoff(0.1, 10.0, rng=random.Random(2))
    for _ in range(20):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_jitter_spreads_a_fleet() -> None:
    """Agents restarted together do not retry in lockstep."""
    delays = {
        round(Backoff(1.0, 10.0, rng=random.Random(seed)).next_delay(), 6) for seed in range(50)
    }
    assert len(delays) == 50
    assert min(delays) >= 0.5


@pytest.mark.parametrize(("floor", "ceiling"), [(0, 1), (-1, 1), (2, 1)])
def test_invalid_bounds_are_rejected(floor: float, ceiling: float) -> None:
    with pytest.raises(ValueError, match="floor"):
        Backoff(floor, ceiling)
