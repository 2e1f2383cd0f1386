"""``/static/``: the browser assets ``scripts/setup`` builds from ``web/`` (esbuild) into
``controlplane/static``, which the wheel ships. Gzip siblings (``*.gz``) are built too and
served to browsers that accept them."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

log = structlog.get_logger()

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
REQUIRED: Final = ("app.css", "dashboard.js", "terminal.js", "terminal.css")


def missing_assets() -> list[str]:
    return [name for name in REQUIRED if not (STATIC_DIR / name).is_file()]


def setup(app: web.Application) -> None:
    missing = missing_assets()
    if missing:
        # A source checkout without `scripts/setup` (or `npm run build` in web/).
        log.warning("web.assets_missing", directory=str(STATIC_DIR), missing=missing)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
