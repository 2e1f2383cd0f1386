"""Prometheus text exposition format 0.0.4: rendering and a capped histogram. Pure.

Lives in the sdk because both the agent and the control plane serve it (the control plane
may import only agent.sdk). Written here rather than taken from ``prometheus_client``:
the agent is lean, and that import alone costs ~1.4 MiB of RSS (docs/benchmarks.md,
"Metrics") for what is a few dozen lines of string formatting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

COUNTER: Final = "counter"
GAUGE: Final = "gauge"
HISTOGRAM: Final = "histogram"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # (name suffix, labels, value)

# Latency buckets in seconds, as prometheus_client's defaults.
DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A histogram keeps at most this many label sets; more are folded into one "other" set,
# so a label with unexpected cardinality cannot grow the process without bound.
MAX_LABEL_SETS: Final = 256


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    kind: str
    help: str
    samples: Sequence[Sample] = ()


def gauge(name: str, help_text: str, value: float, labels: Labels = ()) -> Family:
    return Family(name, GAUGE, help_text, (("", labels, value),))


def counter(name: str, help_text: str, value: float, labels: Labels = ()) -> Family:
    """A counter family; ``name`` carries the conventional ``_total`` suffix."""
    return Family(name, COUNTER, help_text, (("", labels, value),))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1 << 53:
        return str(int(value))
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            lines.append(f"{family.name}{suffix}{_labels(labels)} {format_value(value)}")
    return "\n".join(lines) + "\n"


@dataclass
class _Series:
    counts: list[int]
    total: float = 0.0
    count: int = 0


@dataclass
class Histogram:
    """Cumulative-bucket histogram keyed by label set (at most ``MAX_LABEL_SETS``)."""

    name: str
    help: str
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    overflow_labels: Labels = ()
    _series: dict[Labels, _Series] = field(default_factory=dict)

    def observe(self, labels: Labels, value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            if len(self._series) >= MAX_LABEL_SETS:
                labels = self.overflow_labels
                series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = _Series([0] * len(self.buckets))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                series.counts[i] += 1
        series.total += value
        series.count += 1

    def family(self) -> Family:
        samples: list[Sample] = []
        for labels, series in sorted(self._series.items()):
            for bound, count in zip(self.buckets, series.counts, strict=True):
                samples.append(("_bucket", (*labels, ("le", repr(float(bound)))), count))
            samples.append(("_bucket", (*labels, ("le", "+Inf")), series.count))
            samples.append(("_sum", labels, series.total))
            samples.append(("_count", labels, series.count))
        return Family(self.name, HISTOGRAM, self.help, samples)
