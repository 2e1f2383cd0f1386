"""The /gitauth/{provider} page stores a credential and wakes waiting listeners."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controlplane.store.records import GitAuthProvider
from tests.conftest import ControlPlane

pytestmark = pytest.mark.e2e


async def test_page_saves_token_and_wakes_listen(control_plane: ControlPlane) -> None:
    _, user_token = await control_plane.create_user("alice")
    agents = await control_plane.create_workspace("alice", "dev")
    _, agent_token = agents["main"]
    await control_plane.store.upsert_gitauth_provider(
        GitAuthProvider("gitlab", r"^https://gitlab\.example\.com/", "gitlab")
    )

    async with control_plane.http(agent_token) as agent_http:
        first = await agent_http.get(
            "/api/v2/workspaceagents/me/gitauth",
            params={"url": "https://gitlab.example.com/group/repo.git"},
        )
        assert first.status_code == 200
        page_url = first.json()["url"]
        assert page_url.endswith("/gitauth/gitlab")

        listen = asyncio.create_task(
            agent_http.get(
                "/api/v2/workspaceagents/me/gitauth?url=https%3A%2F%2Fgitlab.example.com%2Fx&listen"
            )
        )
        async with control_plane.http() as anonymous:
            denied = await anonymous.get(page_url)
            assert denied.status_code == 401
            assert denied.json()["message"]
        async with control_plane.http(user_token) as user_http:
            page = await user_http.get(page_url)
            assert page.status_code == 200 and "No credential" in page.text
            saved = await user_http.post(page_url, data={"token": "glpat-secret-token"})
            assert saved.status_code == 200 and "Saved" in saved.text
        response: Any = await asyncio.wait_for(listen, 5)
        assert response.status_code == 200
        assert response.json() == {
            "username": "oauth2",
            "password": "glpat-secret-token",
            "url": "",
        }
