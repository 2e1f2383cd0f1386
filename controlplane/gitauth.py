"""Git authentication: providers matched by URL regex, one credential per user.

``listen`` requests wait until a credential exists: woken at once when it is set through
this server, and re-checked every second for writes from other processes (the admin CLI).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

from agent.sdk.models import GitAuthResponse
from controlplane.store.base import Store
from controlplane.store.records import GitAuthLink, GitAuthProvider

RECHECK_SECONDS: Final = 1.0


def match_provider(providers: list[GitAuthProvider], url: str) -> GitAuthProvider | None:
    """The LAST provider whose regex matches wins (Coder's behaviour)."""
    found = None
    for provider in providers:
        try:
            if re.search(provider.regex, url):
                found = provider
        except re.error:
            continue
    return found


def credential_for(provider_type: str, token: str) -> tuple[str, str]:
    """How each forge expects a token over HTTPS basic auth (docs/protocol.md, "Git SSH key
    and git auth")."""
    kind = provider_type.lower()
    if kind == "gitlab":
        return "oauth2", token
    if kind == "bitbucket":
        return "x-token-auth", token
    return token, ""


def link_usable(link: GitAuthLink | None, now: datetime) -> bool:
    return link is not None and (link.expires_at is None or link.expires_at > now)


def response_for(link: GitAuthLink) -> GitAuthResponse:
    return GitAuthResponse(username=link.username, password=link.password)


class GitAuthNotifier:
    def __init__(self) -> None:
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}

    @property
    def waiting(self) -> int:
        """How many ``listen`` requests are waiting now (tests and metrics)."""
        return sum(len(w) for w in self._waiters.values())

    def notify(self, provider_id: str, user_id: str) -> None:
        for event in self._waiters.get((provider_id, user_id), ()):
            event.set()

    async def wait_for_link(
        self,
        store: Store,
        provider_id: str,
        user_id: str,
        *,
        max_wait: float = 1800.0,
        is_closing: Callable[[], bool] | None = None,
        still_authorized: Callable[[], Awaitable[bool]] | None = None,
    ) -> GitAuthLink | None:
        """Wait until a usable credential exists; None if the wait ended without one
        (the caller went away, its token was revoked, or ``max_wait`` passed).

        ``still_authorized`` is asked at every wake-up, before a credential is read: a
        token revoked while the request waited must not receive a credential set later.
        """
        key = (provider_id, user_id)
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        try:
            while loop.time() < deadline:
                if still_authorized is not None and not await still_authorized():
                    return None
                link = await store.get_gitauth_link(provider_id, user_id)
                if link_usable(link, datetime.now(UTC)):
                    return link
                if is_closing is not None and is_closing():
                    return None
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), RECHECK_SECONDS)
                except TimeoutError:
                    pass
            return None
        finally:
            waiters = self._waiters.get(key, set())
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(key, None)
