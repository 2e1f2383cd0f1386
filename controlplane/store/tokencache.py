"""Remember which token hash signs in which agent or user, so a request skips the lookup.

Every agent request and every connection refresh authenticates by token; the lookup (a
join and the record built from it, spec included) was about a sixth of the server's CPU
at 1,000 agents (docs/benchmarks.md, "Load: many agents"). Only found tokens are cached,
never misses, so a token issued a moment ago works at once.

Correctness rests on invalidation, never on the entry's age alone:

- Every change that can end a token (revocation, the pruning of old identity tokens, a
  new expiry) or a socket's right to stay (a new build of the workspace) moves a counter
  in the database itself: a trigger in the same transaction, so a change made by another
  process (``wsagent admin``) or another replica counts too.
- SQLite: a lookup reads that counter first (one row, one indexed read) and clears the
  cache when it moved; the lookup after a committed revocation cannot hit.
- PostgreSQL: the trigger NOTIFYs every replica (``controlplane.pgbus``), whose cache is
  cleared when the notification arrives (PostgreSQL sends it at commit). The cache is on
  only while that replica's LISTEN connection is up: while it is down, or before it is
  up, every lookup goes to the database.

Entries also expire after ``ttl`` (a LISTEN connection that died without the client
noticing), and an entry that would outlive its token's own expiry is refused at the
expiry. A fill that raced an invalidation (its read began before, its answer arrived
after) is dropped: ``put`` takes the generation read before the lookup.

The records handed out are the ones read when the entry was filled: their identity and
build (id, workspace, build number, spec; a user's id and name) never change, but an
agent's connection times, lifecycle and log counters may be stale. Handlers that need
those read ``Store.get_agent``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Generic, TypeVar

from controlplane.store.records import AgentRecord, UserRecord

R = TypeVar("R")

TTL: Final = 30.0  # seconds an entry may serve without a new lookup
MAX_ENTRIES: Final = 100_000  # per kind; the oldest go first (~0.5 KiB each)


@dataclass(slots=True)
class _Entry(Generic[R]):
    record: R
    token_expires: float | None  # the token's own expiry, wall clock (time.time)
    stale_at: float  # monotonic


class TokenCache(Generic[R]):
    """One kind of token (agents' or users') -> its record; driven by :class:`AuthCache`."""

    def __init__(
        self,
        owner: AuthCache,
        *,
        max_entries: int = MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._owner = owner
        self._entries: dict[str, _Entry[R]] = {}
        self._max = max_entries
        self._monotonic = monotonic
        self._wall = wall

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_hash: str) -> R | None:
        if not self._owner.enabled:
            return None
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry.stale_at <= self._monotonic() or (
            entry.token_expires is not None and entry.token_expires <= self._wall()
        ):
            del self._entries[token_hash]
            return None
        return entry.record

    def put(
        self, token_hash: str, record: R, token_expires: datetime | None, generation: int
    ) -> None:
        """Remember a lookup's answer, unless the cache was cleared since ``generation``
        (read before the lookup began) or is off."""
        owner = self._owner
        if not owner.enabled or generation != owner.generation:
            return
        if len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)))
        expires = None if token_expires is None else token_expires.timestamp()
        self._entries[token_hash] = _Entry(record, expires, self._monotonic() + owner.ttl)

    def clear(self) -> None:
        self._entries.clear()


class AuthCache:
    """The agent and user token caches of one store, cleared together."""

    def __init__(
        self,
        *,
        enabled: bool,
        ttl: float = TTL,
        max_entries: int = MAX_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = enabled
        self.ttl = ttl
        # Moves on every clear: fills begun before a clear are dropped (see put).
        self.generation = 0
        self._seen: int | None = None  # the database's counter when last observed
        self.agents: TokenCache[AgentRecord] = TokenCache(
            self, max_entries=max_entries, monotonic=monotonic, wall=wall
        )
        self.users: TokenCache[UserRecord] = TokenCache(
            self, max_entries=max_entries, monotonic=monotonic, wall=wall
        )

    def invalidate(self) -> None:
        self.generation += 1
        self.agents.clear()
        self.users.clear()

    def observe(self, counter: int) -> None:
        """The database's change counter, read before a lookup: clear if it moved."""
        if counter != self._seen:
            self._seen = counter
            self.invalidate()

    def enable(self) -> None:
        """Changes are being heard from now on (PostgreSQL: LISTEN is up): start afresh."""
        self.invalidate()
        self.enabled = True

    def disable(self) -> None:
        """Changes may go unheard (LISTEN lost): every lookup goes to the database."""
        self.enabled = False
        self.invalidate()

    def version(self) -> int | None:
        """What a connection refresh compares to skip its build check: None when off."""
        return self.generation if self.enabled else None
