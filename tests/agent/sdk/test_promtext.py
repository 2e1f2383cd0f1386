"""agent.sdk.promtext: what it renders parses back with prometheus_client's parser."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from agent.sdk.promtext import Histogram, counter, format_value, gauge, render


def test_escaped_labels_and_help_round_trip() -> None:
    nasty = 'a "quoted" \\ back\nslash'
    text = render(
        [
            gauge("g", "help with \\ and\nnewline", 1.5, (("v", nasty),)),
            counter("c_total", "a counter", 3),
        ]
    )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["g"].documentation == "help with \\ and\nnewline"
    assert families["g"].samples[0].labels == {"v": nasty}
    assert families["g"].samples[0].value == 1.5
    assert families["c"].type == "counter" and families["c"].samples[0].value == 3


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram("lat_seconds", "latency", buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        h.observe((("route", "/x/{id}"),), value)
    (family,) = text_string_to_metric_families(render([h.family()]))
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got[("lat_seconds_bucket", "0.1")] == 1
    assert got[("lat_seconds_bucket", "1.0")] == 2
    assert got[("lat_seconds_bucket", "+Inf")] == 3
    assert got[("lat_seconds_count", None)] == 3
    assert math.isclose(got[("lat_seconds_sum", None)], 5.55)


def test_special_values() -> None:
    assert format_value(math.inf) == "+Inf" and format_value(-math.inf) == "-Inf"
    assert format_value(math.nan) == "NaN" and format_value(2.0) == "2"
    assert format_value(0.25) == "0.25"
