"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from controlplane.config import ServerConfig
    from controlplane.coordinator import Coordinator
    from controlplane.gitauth import GitAuthNotifier
    from controlplane.store.base import Store

STORE: web.AppKey[Store] = web.AppKey("store")
CONFIG: web.AppKey[ServerConfig] = web.AppKey("config")
COORDINATOR: web.AppKey[Coordinator] = web.AppKey("coordinator")
GITAUTH: web.AppKey[GitAuthNotifier] = web.AppKey("gitauth")
