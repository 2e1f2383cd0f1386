"""Helpers for the web front end's tests: a cookie-keeping HTTP client that signs in the
way a browser does (GET the form for its CSRF cookie, then POST it from our origin)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from controlplane.admin import set_password
from tests.conftest import ControlPlane

PASSWORD = "correct horse battery"


def csrf_from(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


class WebClient:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.origin = plane.url
        self.http = httpx.AsyncClient(base_url=plane.url, timeout=15.0, follow_redirects=False)

    async def form(
        self, path: str, data: dict[str, str], origin: str | None = None
    ) -> httpx.Response:
        page = await self.http.get(path, headers={"Accept": "text/html"})
        fields = {"csrf": csrf_from(page.text), **data}
        return await self.http.post(path, data=fields, headers={"Origin": origin or self.origin})

    async def sign_in(
        self, user: str, password: str = PASSWORD, return_to: str = ""
    ) -> httpx.Response:
        path = "/login" + (f"?return_to={return_to}" if return_to else "")
        page = await self.http.get(path, headers={"Accept": "text/html"})
        fields = {"csrf": csrf_from(page.text), "username": user, "password": password}
        found = re.search(r'name="return_to" value="([^"]*)"', page.text)
        if found:
            fields["return_to"] = found.group(1)
        return await self.http.post("/login", data=fields, headers={"Origin": self.origin})

    @property
    def session(self) -> str:
        return self.http.cookies.get("coder_session_token") or ""


@pytest.fixture
async def web_client(
    control_plane: ControlPlane,
) -> AsyncIterator[Callable[[], Awaitable[WebClient]]]:
    clients: list[WebClient] = []

    async def make() -> WebClient:
        client = WebClient(control_plane)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.http.aclose()


async def user_with_password(plane: ControlPlane, name: str) -> str:
    """Create ``name`` with :data:`PASSWORD`; returns its CLI session token."""
    _, token = await plane.create_user(name)
    await set_password(plane.store, name, PASSWORD)
    return token
