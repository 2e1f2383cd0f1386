"""Every WebSocket a user opened, by the session token that opened it.

When a token is revoked (``/logout``, ``wsagent admin user revoke-tokens``, or expiry) its
sockets are closed: at once for revocations made by this process, and within
``SWEEP_INTERVAL`` for those made elsewhere (the admin command writes the database
directly), by checking the tokens of open sockets against the store. The registration is
automatic: ``on_response_prepare`` sees each WebSocket a user-authenticated request
upgrades to, so new WebSocket routes are covered without doing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Final

import structlog
from aiohttp import WSCloseCode, web

from controlplane.appkeys import STORE
from controlplane.auth import AUTH_TOKEN_HASH, AUTH_USER

log = structlog.get_logger()

SWEEP_INTERVAL: Final = 1.0
CLOSE_TIMEOUT: Final = 5.0
REVOKED_REASON: Final = b"session revoked"


class UserSockets:
    def __init__(self) -> None:
        # token hash -> its open sockets; a closed socket drops out by itself (weak refs).
        self._by_token: dict[str, weakref.WeakSet[web.WebSocketResponse]] = {}
        self._users: dict[str, str] = {}  # token hash -> user id

    def add(self, user_id: str, token_hash: str, ws: web.WebSocketResponse) -> None:
        self._by_token.setdefault(token_hash, weakref.WeakSet()).add(ws)
        self._users[token_hash] = user_id

    def open_count(self) -> int:
        return sum(1 for sockets in self._by_token.values() for ws in sockets if not ws.closed)

    def _prune(self) -> None:
        for token_hash in list(self._by_token):
            if not any(not ws.closed for ws in self._by_token[token_hash]):
                del self._by_token[token_hash]
                self._users.pop(token_hash, None)

    async def close_tokens(self, token_hashes: set[str]) -> int:
        sockets = [
            ws
            for token_hash in token_hashes
            for ws in list(self._by_token.pop(token_hash, ()))
            if not ws.closed
        ]
        for token_hash in token_hashes:
            self._users.pop(token_hash, None)
        await asyncio.gather(*(_close(ws) for ws in sockets))
        return len(sockets)

    async def close_user(self, user_id: str) -> int:
        hashes = {h for h, owner in self._users.items() if owner == user_id}
        return await self.close_tokens(hashes)

    async def sweep(self, app: web.Application) -> int:
        """Close the sockets whose token no longer signs its user in."""
        self._prune()
        if not self._by_token:
            return 0
        hashes = set(self._by_token)
        live = await app[STORE].live_user_token_hashes(hashes)
        dead = hashes - live
        if not dead:
            return 0
        closed = await self.close_tokens(dead)
        log.info("sessions.sockets_closed", reason="token revoked or expired", sockets=closed)
        return closed


async def _close(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            ws.close(code=WSCloseCode.POLICY_VIOLATION, message=REVOKED_REASON), CLOSE_TIMEOUT
        )


USER_SOCKETS: web.AppKey[UserSockets] = web.AppKey("user_sockets")
_SWEEPER: web.AppKey[asyncio.Task[None]] = web.AppKey("user_sockets_sweeper")


async def _register(request: web.Request, response: web.StreamResponse) -> None:
    if not isinstance(response, web.WebSocketResponse):
        return
    user = request.get(AUTH_USER)
    token_hash = request.get(AUTH_TOKEN_HASH)
    if user is not None and token_hash is not None:
        request.app[USER_SOCKETS].add(user.id, token_hash, response)


async def _sweep_forever(app: web.Application) -> None:
    sockets = app[USER_SOCKETS]
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            await sockets.sweep(app)
        except Exception:
            log.exception("sessions.sweep_failed")


async def _start(app: web.Application) -> None:
    app[_SWEEPER] = asyncio.create_task(_sweep_forever(app))


async def _stop(app: web.Application) -> None:
    task = app[_SWEEPER]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def setup(app: web.Application) -> None:
    app[USER_SOCKETS] = UserSockets()
    app.on_response_prepare.append(_register)
    app.on_startup.append(_start)
    app.on_shutdown.append(_stop)
