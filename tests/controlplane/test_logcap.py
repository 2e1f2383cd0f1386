"""The startup-log append decision both stores share."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane.store.logcap import line_size, plan_append
from controlplane.store.records import NewStartupLog

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _lines(*outputs: str) -> list[NewStartupLog]:
    return [NewStartupLog(T0, output, "info") for output in outputs]


def test_an_empty_line_counts_one_byte_and_utf8_counts_bytes() -> None:
    assert line_size("") == 1
    assert line_size("é") == 2


def test_a_retried_batch_skips_what_was_stored_and_keeps_the_rest() -> None:
    plan = plan_append(
        _lines("a", "b", "c"),
        stored_length=2,
        stored_stream="s1",
        stored_next_seq=12,
        cap_bytes=100,
        stream="s1",
        first_seq=10,
    )
    assert plan.skip == 2
    assert [line.output for line in plan.kept] == ["c"]
    assert (plan.length, plan.next_seq, plan.overflowed, plan.update_agent) == (3, 13, False, True)


def test_a_fully_repeated_batch_changes_nothing() -> None:
    plan = plan_append(
        _lines("a"),
        stored_length=1,
        stored_stream="s1",
        stored_next_seq=1,
        cap_bytes=100,
        stream="s1",
        first_seq=0,
    )
    assert (plan.skip, plan.kept, plan.update_agent) == (1, [], False)


def test_the_cap_stops_at_the_first_line_that_does_not_fit() -> None:
    plan = plan_append(
        _lines("aaaa", "bbbb", "c"),
        stored_length=0,
        stored_stream="",
        stored_next_seq=0,
        cap_bytes=6,
        stream="",
        first_seq=0,
    )
    assert [line.output for line in plan.kept] == ["aaaa"]
    assert (plan.length, plan.overflowed, plan.next_seq) == (4, True, 0)
