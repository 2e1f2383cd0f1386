"""Jittered exponential backoff: pure, with an injectable random source."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays grow from ``floor`` by ``factor`` up to ``ceiling``.

    Each delay is drawn uniformly from [d/2, d] ("equal jitter"), so a fleet of agents
    restarted together does not reconnect in lockstep, yet no delay collapses to zero.
    """

    floor: float
    ceiling: float
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _current: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.ceiling:
            raise ValueError("backoff needs 0 < floor <= ceiling")
        self._current = self.floor

    def next_delay(self) -> float:
        base = self._current
        self._current = min(self.ceiling, self._current * self.factor)
        return self.rng.uniform(base / 2, base)

    def reset(self) -> None:
        self._current = self.floor

    @property
    def at_ceiling(self) -> bool:
        return self._current >= self.ceiling
