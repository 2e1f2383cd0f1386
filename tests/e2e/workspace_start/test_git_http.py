"""A real ``git clone`` over HTTP with basic auth, answered by ``wsagent`` as GIT_ASKPASS
with the credential the control plane holds for the user (docs/protocol.md, "Git helpers in
the workspace")."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.sessionenv import wsagent_executable
from controlplane.admin import set_git_credential
from controlplane.appkeys import GITAUTH
from controlplane.store.records import GitAuthProvider
from tests.conftest import ControlPlane, agent_env
from tests.e2e.workspace_start.githttp import git_backend, make_repo, serve_git

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(git_backend() is None, reason="git http-backend is not installed"),
]

PROVIDER = "local-forge"


async def _agent_token(cp: ControlPlane, user: str, provider_type: str) -> str:
    await cp.create_user(user)
    agents = await cp.create_workspace(user, "dev")
    await cp.store.upsert_gitauth_provider(
        GitAuthProvider(PROVIDER, r"^http://127\.0\.0\.1:", provider_type)
    )
    return agents["main"][1]


def _git_env(cp: ControlPlane, token: str, home: Path, **extra: str) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ASKPASS": wsagent_executable(),
        "CODER_AGENT_URL": cp.url,
        "CODER_AGENT_TOKEN": token,
        **extra,
    }


async def _clone(url: str, dest: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "git",
        "clone",
        "-q",
        url,
        str(dest),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # no controlling terminal: git cannot prompt there
    )


async def _finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> tuple[int, str]:
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    ("provider_type", "expected"),
    [("gitlab", ("oauth2", "glpat-secret")), ("github", ("glpat-secret", "glpat-secret"))],
)
async def test_clone_with_askpass_credentials(
    control_plane: ControlPlane, tmp_path: Path, provider_type: str, expected: tuple[str, str]
) -> None:
    """GitLab-style credentials are a user/password pair; a GitHub-style token answers
    both prompts."""
    token = await _agent_token(control_plane, "ivy", provider_type)
    await set_git_credential(control_plane.store, PROVIDER, "ivy", token="glpat-secret")
    make_repo(tmp_path / "srv")
    async with serve_git(tmp_path / "srv", lambda u, p: (u, p) == expected) as git:
        proc = await _clone(
            f"{git.url}/repo.git", tmp_path / "out", _git_env(control_plane, token, tmp_path / "h")
        )
        code, err = await _finish(proc)
        assert code == 0, err
        assert git.attempts[-1] == expected
    assert (tmp_path / "out" / "README").read_text() == "hello from the test repo\n"


async def test_clone_waits_for_credential_added_later(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """No credential yet: askpass prints the URL, waits with ``listen``, and the clone
    completes once the credential is stored."""
    token = await _agent_token(control_plane, "jo", "gitlab")
    make_repo(tmp_path / "srv")
    expected = ("oauth2", "later-token")
    async with serve_git(tmp_path / "srv", lambda u, p: (u, p) == expected) as git:
        proc = await _clone(
            f"{git.url}/repo.git", tmp_path / "out", _git_env(control_plane, token, tmp_path / "h")
        )
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 20)
        assert b"You must authenticate" in line
        assert f"{control_plane.url}/gitauth/{PROVIDER}".encode() in line
        assert not git.attempts  # git is still waiting for the username
        await set_git_credential(control_plane.store, PROVIDER, "jo", token="later-token")
        user = await control_plane.store.get_user_by_name("jo")
        control_plane.app[GITAUTH].notify(PROVIDER, user.id)
        code, err = await _finish(proc)
        assert code == 0, err
    assert (tmp_path / "out" / "README").exists()


async def test_no_provider_fails_with_server_message(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    token = await _agent_token(control_plane, "kim", "gitlab")
    await control_plane.store.upsert_gitauth_provider(
        GitAuthProvider(PROVIDER, r"^https://nowhere\.example/", "")
    )
    make_repo(tmp_path / "srv")
    async with serve_git(tmp_path / "srv", lambda u, p: False) as git:
        proc = await _clone(
            f"{git.url}/repo.git", tmp_path / "out", _git_env(control_plane, token, tmp_path / "h")
        )
        code, err = await _finish(proc)
    assert code != 0
    assert "No git provider found for URL" in err


async def test_askpass_deadline(control_plane: ControlPlane, tmp_path: Path) -> None:
    """Never hangs: with no credential the overall deadline ends the wait."""
    token = await _agent_token(control_plane, "lou", "gitlab")
    make_repo(tmp_path / "srv")
    env = _git_env(control_plane, token, tmp_path / "h", CODER_AGENT_GIT_ASKPASS_DEADLINE="1s")
    async with serve_git(tmp_path / "srv", lambda u, p: False) as git:
        started = asyncio.get_running_loop().time()
        proc = await _clone(f"{git.url}/repo.git", tmp_path / "out", env)
        code, err = await _finish(proc, timeout=20)
    assert code != 0
    assert "timed out waiting for git authentication" in err
    assert asyncio.get_running_loop().time() - started < 10


async def test_startup_script_clones_with_session_askpass(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    """The daemon's session environment is enough for git: a startup script clones with
    GIT_ASKPASS=<wsagent> and the agent's token. With a git-auth provider configured the
    agent also writes the VS Code settings that keep VS Code's own askpass out of the way."""
    make_repo(tmp_path / "srv")
    expected = ("oauth2", "script-token")
    async with serve_git(tmp_path / "srv", lambda u, p: (u, p) == expected) as git:
        await control_plane.create_user("max")
        await control_plane.store.upsert_gitauth_provider(
            GitAuthProvider(PROVIDER, r"^http://127\.0\.0\.1:", "gitlab")
        )
        await set_git_credential(control_plane.store, PROVIDER, "max", token="script-token")
        script = f'git clone -q {git.url}/repo.git "$HOME/checkout" </dev/null'
        agents = await control_plane.create_workspace(
            "max", "dev", [{"name": "main", "startup_script": script}]
        )
        token = agents["main"][1]
        home = tmp_path / "home"
        home.mkdir()
        env = agent_env(control_plane.url, token, tmp_path / "logs", HOME=str(home))
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        agent = await start_agent(env)
        exited = await agent.wait_for_event("startup.script_exited", timeout=30)
        log_text = (tmp_path / "logs" / "coder-startup-script.log").read_text()
        assert exited["exit_code"] == 0, log_text
    assert (home / "checkout" / "README").exists()
    settings = home / ".vscode-server" / "data" / "Machine" / "settings.json"
    assert json.loads(settings.read_text())["git.useIntegratedAskPass"] is False
    assert (settings.stat().st_mode & 0o777) == 0o600
