"""``GET /me/gitauth``: provider matching, credentials per forge, and ``listen``
(docs/protocol.md, "Git SSH key and git auth")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from controlplane.admin import set_git_credential
from controlplane.appkeys import GITAUTH
from controlplane.store.records import GitAuthProvider
from tests.conftest import poll_until
from tests.e2e.controlplane.conftest import ME, World, assert_error

pytestmark = pytest.mark.e2e

REPO = "https://github.com/coder/coder.git"


async def _providers(world: World, *providers: tuple[str, str, str]) -> None:
    for pid, regex, kind in providers:
        await world.cp.store.upsert_gitauth_provider(GitAuthProvider(pid, regex, kind))


async def _gitauth(world: World, **params: str) -> httpx.Response:
    async with world.agent() as client:
        return await client.get(f"{ME}/gitauth", params=params)


async def test_missing_url_is_400(world: World) -> None:
    await _providers(world, ("github", r"github\.com", "github"))
    assert_error(await _gitauth(world), 400, "Missing 'url' query parameter!")
    assert_error(await _gitauth(world, url=""), 400, "Missing 'url' query parameter!")


async def test_no_matching_provider_is_404(world: World) -> None:
    assert_error(await _gitauth(world, url=REPO), 404, f'No git provider found for URL "{REPO}"')
    await _providers(world, ("gitlab", r"gitlab\.com", "gitlab"))
    assert_error(await _gitauth(world, url=REPO), 404)


async def test_without_credential_returns_the_auth_url_of_the_last_matching_provider(
    world: World,
) -> None:
    await _providers(
        world,
        ("first", r"github\.com", "github"),
        ("gitlab", r"gitlab\.com", "gitlab"),
        ("last", r"^https://github\.com/coder/", "github"),
    )
    response = await _gitauth(world, url=REPO)
    assert response.status_code == 200
    assert response.json() == {
        "username": "",
        "password": "",
        "url": f"{world.cp.url}/gitauth/last",
    }
    other = await _gitauth(world, url="https://github.com/other/repo")
    assert other.json()["url"].endswith("/gitauth/first")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("github", {"username": "tok123", "password": ""}),
        ("azure-devops", {"username": "tok123", "password": ""}),
        ("", {"username": "tok123", "password": ""}),
        ("gitlab", {"username": "oauth2", "password": "tok123"}),
        ("bitbucket", {"username": "x-token-auth", "password": "tok123"}),
    ],
)
async def test_credential_is_formatted_per_provider_type(
    world: World, kind: str, expected: dict[str, str]
) -> None:
    await _providers(world, ("forge", r"example\.com", kind))
    await set_git_credential(world.cp.store, "forge", "alice", token="tok123")
    response = await _gitauth(world, url="https://example.com/a/b.git")
    assert response.status_code == 200
    assert response.json() == {**expected, "url": ""}


async def test_credentials_are_per_owner(world: World) -> None:
    await _providers(world, ("github", r"github\.com", "github"))
    await set_git_credential(world.cp.store, "github", "bob", token="bobs-token")
    assert (await _gitauth(world, url=REPO)).json()["url"].endswith("/gitauth/github")


async def test_expired_credential_returns_the_url(world: World) -> None:
    await _providers(world, ("github", r"github\.com", "github"))
    alice = await world.cp.store.get_user_by_name("alice")
    past = datetime.now(UTC) - timedelta(minutes=1)
    await world.cp.store.set_gitauth_link("github", alice.id, "old", "", past)
    assert (await _gitauth(world, url=REPO)).json()["url"].endswith("/gitauth/github")


async def test_listen_waits_for_a_credential_set_through_the_store(world: World) -> None:
    await _providers(world, ("github", r"github\.com", "github"))
    notifier = world.cp.app[GITAUTH]
    async with world.agent() as client:
        # ``listen`` is a presence flag: the agent sends it with no value.
        request = asyncio.create_task(client.get(f"{ME}/gitauth?url={REPO}&listen"))
        await poll_until(
            lambda: notifier.waiting == 1, timeout=5, message="listen never started waiting"
        )
        assert not request.done()
        alice = await world.cp.store.get_user_by_name("alice")
        await world.cp.store.set_gitauth_link("github", alice.id, "fresh-token", "")
        response = await asyncio.wait_for(request, 5)
    assert response.status_code == 200
    assert response.json() == {"username": "fresh-token", "password": "", "url": ""}
    assert notifier.waiting == 0


async def test_listen_with_a_credential_answers_at_once(world: World) -> None:
    await _providers(world, ("gitlab", r"gitlab\.com", "gitlab"))
    await set_git_credential(world.cp.store, "gitlab", "alice", token="t")
    async with world.agent() as client:
        response = await asyncio.wait_for(
            client.get(f"{ME}/gitauth", params={"url": "https://gitlab.com/x", "listen": "false"}),
            2,
        )
    assert response.json() == {"username": "oauth2", "password": "t", "url": ""}


async def test_listen_ends_when_the_client_disconnects(world: World) -> None:
    await _providers(world, ("github", r"github\.com", "github"))
    notifier = world.cp.app[GITAUTH]
    client = world.agent()
    request = asyncio.create_task(client.get(f"{ME}/gitauth?url={REPO}&listen"))
    await poll_until(lambda: notifier.waiting == 1, timeout=5)
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await client.aclose()
    await poll_until(
        lambda: notifier.waiting == 0, timeout=5, message="listen outlived its request"
    )


async def test_listen_for_unknown_provider_is_404_at_once(world: World) -> None:
    response = await asyncio.wait_for(_gitauth(world, url=REPO, listen=""), 2)
    assert_error(response, 404)


async def test_listen_of_a_revoked_agent_never_receives_a_later_credential(world: World) -> None:
    """Revoking the agent's tokens ends its waiting ``listen`` with a 401; a credential the
    user saves afterwards is never handed to it."""
    await _providers(world, ("github", r"github\.com", "github"))
    notifier = world.cp.app[GITAUTH]
    async with world.agent() as client:
        request = asyncio.create_task(client.get(f"{ME}/gitauth?url={REPO}&listen"))
        await poll_until(lambda: notifier.waiting == 1, timeout=5)
        assert await world.cp.store.revoke_agent_tokens(world.agent_id) >= 1
        alice = await world.cp.store.get_user_by_name("alice")
        await world.cp.store.set_gitauth_link("github", alice.id, "new-user-secret", "")
        notifier.notify("github", alice.id)  # what the web page does on save
        response = await asyncio.wait_for(request, 5)
    assert_error(response, 401, "Workspace agent not authorized.")
    assert "new-user-secret" not in response.text
    assert notifier.waiting == 0


async def test_revoking_tokens_ends_a_waiting_listen(world: World) -> None:
    await _providers(world, ("github", r"github\.com", "github"))
    notifier = world.cp.app[GITAUTH]
    async with world.agent() as client:
        request = asyncio.create_task(client.get(f"{ME}/gitauth?url={REPO}&listen"))
        await poll_until(lambda: notifier.waiting == 1, timeout=5)
        await world.cp.store.revoke_agent_tokens(world.agent_id)
        # Revocation comes from another process (the admin CLI): the next periodic
        # re-check, about a second later, must notice it.
        response = await asyncio.wait_for(request, 5)
    assert_error(response, 401)
    assert notifier.waiting == 0


async def test_chunked_git_auth_form_is_capped_on_bytes_read(world: World) -> None:
    """A chunked body declares no length: the cap applies to what is actually read."""
    await _providers(world, ("github", r"github\.com", "github"))

    async def body() -> Any:
        yield b"token=ghp_"
        for _ in range(64):
            yield b"a" * 1024

    async with world.user() as client:
        response = await client.post(
            "/gitauth/github",
            content=body(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_error(response, 413)
        alice = await world.cp.store.get_user_by_name("alice")
        assert await world.cp.store.get_gitauth_link("github", alice.id) is None
        small = await client.post("/gitauth/github", data={"token": "ghp_small"})
    assert small.status_code == 200 and "Saved" in small.text
    assert (await world.cp.store.get_gitauth_link("github", alice.id)).username == "ghp_small"
