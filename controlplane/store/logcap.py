"""The startup-log append decision shared by both stores: which lines of a batch are new
(a retried batch repeats lines already stored), which fit under the per-agent cap, and what
the agent's log bookkeeping becomes. Pure: the stores do the reading and writing."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.store.records import NewStartupLog


def line_size(text: str) -> int:
    # Coder counts the output's bytes; an empty line counts 1 here, so the cap bounds the
    # number of rows too.
    return max(1, len(text.encode("utf-8", "surrogatepass")))


@dataclass(frozen=True, slots=True)
class AppendPlan:
    skip: int  # leading lines of the batch already stored
    kept: list[NewStartupLog]  # the lines to insert, in order
    length: int  # the agent's stored bytes after the insert
    overflowed: bool
    next_seq: int
    update_agent: bool  # whether the agent's bookkeeping row changes


def plan_append(
    logs: list[NewStartupLog],
    *,
    stored_length: int,
    stored_stream: str,
    stored_next_seq: int,
    cap_bytes: int,
    stream: str,
    first_seq: int,
) -> AppendPlan:
    skip = 0
    if stream and stream == stored_stream:
        # A retried batch: its lines below the next expected number are stored.
        skip = min(len(logs), max(0, stored_next_seq - first_seq))
    length = stored_length
    kept: list[NewStartupLog] = []
    overflowed = False
    for line in logs[skip:]:
        size = line_size(line.output)
        if length + size > cap_bytes:
            overflowed = True
            break
        kept.append(line)
        length += size
    return AppendPlan(
        skip=skip,
        kept=kept,
        length=length,
        overflowed=overflowed,
        next_seq=first_seq + len(logs) if stream else 0,
        update_agent=skip < len(logs) or stream != stored_stream,
    )
