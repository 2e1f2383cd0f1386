"""The connection guard's descriptor arithmetic (controlplane/connguard.py)."""

from __future__ import annotations

import pytest

from controlplane.connguard import ACCEPTS_PER_TURN, RESERVED_FDS, accepts_per_turn, cap_for


@pytest.mark.parametrize("fd_limit", [128, 256, 1024, 2048, 65536])
def test_a_flood_turn_never_needs_more_descriptors_than_the_limit(fd_limit: int) -> None:
    cap = cap_for(1 << 30, fd_limit)
    accepts = accepts_per_turn(fd_limit)
    # The cap's connections, one turn's accepts not yet admitted, the previous turn's
    # evictions not yet closed, and the whole reserve in use.
    assert cap + 2 * accepts + RESERVED_FDS < fd_limit


def test_large_limits_keep_asyncio_batches_and_small_ones_shrink_them() -> None:
    assert accepts_per_turn(65536) == ACCEPTS_PER_TURN
    assert accepts_per_turn(2048) == ACCEPTS_PER_TURN
    assert accepts_per_turn(256) == 16
    assert accepts_per_turn(8) == 1
