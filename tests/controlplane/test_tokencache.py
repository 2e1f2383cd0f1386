"""The token cache's rules, without a store: what it may serve and when it must forget."""

from __future__ import annotations

from datetime import UTC, datetime

from controlplane.store.records import UserRecord
from controlplane.store.tokencache import AuthCache

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
ALICE = UserRecord("u1", "alice", "alice@example.com", CREATED)
BOB = UserRecord("u2", "bob", "bob@example.com", CREATED)


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_800_000_000.0


def cache(
    *, enabled: bool = True, ttl: float = 30.0, max_entries: int = 100, clocks: Clocks | None = None
) -> AuthCache:
    clocks = clocks or Clocks()
    return AuthCache(
        enabled=enabled,
        ttl=ttl,
        max_entries=max_entries,
        monotonic=lambda: clocks.mono,
        wall=lambda: clocks.wall,
    )


def test_a_hit_returns_what_was_put() -> None:
    auth = cache()
    auth.users.put("h1", ALICE, None, auth.generation)
    assert auth.users.get("h1") is ALICE
    assert auth.users.get("h2") is None
    assert auth.agents.get("h1") is None  # kinds never mix


def test_a_fill_that_raced_an_invalidation_is_dropped() -> None:
    auth = cache()
    generation = auth.generation  # read before the lookup began
    auth.invalidate()  # a revocation arrived while the lookup ran
    auth.users.put("h1", ALICE, None, generation)
    assert auth.users.get("h1") is None


def test_invalidate_forgets_both_kinds() -> None:
    auth = cache()
    auth.users.put("h1", ALICE, None, auth.generation)
    auth.invalidate()
    assert auth.users.get("h1") is None
    assert len(auth.users) == len(auth.agents) == 0


def test_the_database_counter_clears_only_when_it_moves() -> None:
    auth = cache()
    auth.observe(7)
    auth.users.put("h1", ALICE, None, auth.generation)
    auth.observe(7)
    assert auth.users.get("h1") is ALICE
    auth.observe(8)
    assert auth.users.get("h1") is None


def test_an_entry_expires_with_its_token_and_after_the_ttl() -> None:
    clocks = Clocks()
    auth = cache(ttl=30.0, clocks=clocks)
    expires = datetime.fromtimestamp(clocks.wall + 5, UTC)
    auth.users.put("short", ALICE, expires, auth.generation)
    auth.users.put("long", BOB, None, auth.generation)
    clocks.wall += 4.9
    assert auth.users.get("short") is ALICE
    clocks.wall += 0.1  # the token's own expiry: refused at that instant
    assert auth.users.get("short") is None
    clocks.mono += 29.9
    assert auth.users.get("long") is BOB
    clocks.mono += 0.1
    assert auth.users.get("long") is None


def test_off_serves_nothing_and_keeps_nothing() -> None:
    auth = cache(enabled=False)
    auth.users.put("h1", ALICE, None, auth.generation)
    assert auth.users.get("h1") is None
    assert auth.version() is None
    auth.enable()
    assert auth.version() == auth.generation
    auth.users.put("h1", ALICE, None, auth.generation)
    auth.disable()  # a change may go unheard from here on: forget, and stop serving
    assert auth.users.get("h1") is None
    assert auth.version() is None


def test_enabling_drops_fills_begun_while_off() -> None:
    auth = cache(enabled=False)
    generation = auth.generation
    auth.enable()
    auth.users.put("h1", ALICE, None, generation)
    assert auth.users.get("h1") is None


def test_the_version_moves_on_every_invalidation() -> None:
    auth = cache()
    first = auth.version()
    auth.invalidate()
    assert auth.version() != first


def test_the_oldest_entry_goes_when_full() -> None:
    auth = cache(max_entries=2)
    for name in ("a", "b", "c"):
        auth.users.put(name, ALICE, None, auth.generation)
    assert len(auth.users) == 2
    assert auth.users.get("a") is None
    assert auth.users.get("c") is ALICE
