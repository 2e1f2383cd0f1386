"""The bus without a database: its inbox (notifications read, not yet handled) is bounded
in bytes, not only in count, so chunks of large messages cannot pile up without limit
(notifications are handed to it as its listening connection would); every message has a
UTF-8 form PostgreSQL takes."""

from __future__ import annotations

from structlog.testing import capture_logs

from controlplane import pgbus
from controlplane.coordinator import Coordinator
from controlplane.gitauth import GitAuthNotifier


async def test_the_inbox_stops_taking_chunks_at_its_byte_limit() -> None:
    bus = pgbus.PgBus(
        "postgresql://unused", "r1", Coordinator(), GitAuthNotifier(), stale_after=6.0
    )
    chunk = "#x-1:0:9999:" + "y" * 7800
    with capture_logs() as logs:
        for _ in range(pgbus.INBOX_BYTES // len(chunk) + 50):
            bus._on_notify(None, 0, "wsagent_r_test", chunk)  # type: ignore[arg-type]
    assert bus._inbox_bytes <= pgbus.INBOX_BYTES
    assert bus._inbox.qsize() == pgbus.INBOX_BYTES // len(chunk)
    assert sum(e["event"] == "bus.inbox_full" for e in logs) == 50
    # Small notifications (a revocation) still fit in what is left.
    bus._on_notify(None, 0, "wsagent_revoked", "0f0e8a4e-5b70-4a43-a51e-53a6d8e4a0d1")  # type: ignore[arg-type]
    assert bus._inbox.qsize() == pgbus.INBOX_BYTES // len(chunk) + 1


def test_a_message_with_a_lone_surrogate_still_has_a_utf8_form() -> None:
    # JSON lets a peer send "\ud800"; PostgreSQL takes only valid UTF-8 text.
    bus = pgbus.PgBus(
        "postgresql://unused", "r1", Coordinator(), GitAuthNotifier(), stale_after=6.0
    )
    text = bus._message("to_agent", agent="a", payload={"name": "x\ud800y", "snow": "\u2603"})
    assert "\\ud800" in text
    assert text.encode()  # no UnicodeEncodeError
    plain = bus._message("to_agent", agent="a", payload={"snow": "\u2603"})
    assert "\u2603" in plain  # raw UTF-8 when it can be
