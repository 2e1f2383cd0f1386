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
    app.router.add_get("/static/{name}", asset)


async def asset(request: web.Request) -> web.FileResponse:
    # One flat directory; anything else (a dot file, a subpath, a missing name) is the
    # error middleware's 404 with Coder's body. aiohttp's own static route answers a
    # missing file with an empty body instead.
    name = request.match_info["name"]
    path = STATIC_DIR / name
    if name.startswith(".") or "/" in name or not path.is_file():
        raise web.HTTPNotFound()
    # FileResponse serves the gzip sibling to a client that accepts it.
    return web.FileResponse(path)
