"""``wsagent`` run the way git runs GIT_ASKPASS, against the real control plane, over
plain HTTP and over verified TLS."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from agent.sessionenv import wsagent_executable
from controlplane.admin import set_git_credential
from controlplane.store.records import GitAuthProvider
from tests.conftest import ControlPlane
from tests.e2e.test_tls import make_ca_and_server_cert

pytestmark = pytest.mark.e2e

FORGE = "http://127.0.0.1:9"


async def _setup(cp: ControlPlane, user: str) -> str:
    await cp.create_user(user)
    agents = await cp.create_workspace(user, "dev")
    await cp.store.upsert_gitauth_provider(
        GitAuthProvider("forge", r"^http://127\.0\.0\.1:9", "gitlab")
    )
    await set_git_credential(cp.store, "forge", user, token="tok-123")
    return agents["main"][1]


async def _askpass(
    prompt: str, env: dict[str, str], git_prefix: bool = True
) -> tuple[int, str, str]:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    if git_prefix:
        full["GIT_PREFIX"] = ""  # git sets it, even empty
    proc = await asyncio.create_subprocess_exec(
        wsagent_executable(),
        prompt,
        env=full,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_username_then_password(control_plane: ControlPlane) -> None:
    token = await _setup(control_plane, "rae")
    env = {"CODER_AGENT_URL": control_plane.url, "CODER_AGENT_TOKEN": token}
    assert await _askpass(f"Username for '{FORGE}': ", env) == (0, "oauth2\n", "")
    assert await _askpass("Password for 'http://oauth2@127.0.0.1:9': ", env) == (0, "tok-123\n", "")


async def test_without_git_prefix_it_is_not_askpass(control_plane: ControlPlane) -> None:
    token = await _setup(control_plane, "sam")
    env = {"CODER_AGENT_URL": control_plane.url, "CODER_AGENT_TOKEN": token}
    code, out, err = await _askpass(f"Username for '{FORGE}': ", env, git_prefix=False)
    assert code == 2 and out == ""
    assert "unknown command" in err


async def test_bad_agent_token_fails(control_plane: ControlPlane) -> None:
    await _setup(control_plane, "tia")
    env = {"CODER_AGENT_URL": control_plane.url, "CODER_AGENT_TOKEN": "not-a-token"}
    code, out, err = await _askpass(f"Username for '{FORGE}': ", env)
    assert code != 0 and out == ""
    assert "wsagent askpass:" in err


async def test_askpass_over_tls(make_control_plane: Any, tmp_path: Path) -> None:
    """The configured CA is used; without it the certificate is refused; skip-verify works."""
    ca_file, cert_file, key_file = make_ca_and_server_cert(tmp_path)
    cp = await make_control_plane(tls_cert=cert_file, tls_key=key_file)
    assert cp.url.startswith("https://")
    token = await _setup(cp, "uma")
    env = {"CODER_AGENT_URL": cp.url, "CODER_AGENT_TOKEN": token}
    prompt = f"Username for '{FORGE}': "
    code, _, err = await _askpass(prompt, env)
    assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in err
    assert await _askpass(prompt, {**env, "CODER_AGENT_TLS_CA_FILE": str(ca_file)}) == (
        0,
        "oauth2\n",
        "",
    )
    skip = {**env, "CODER_AGENT_INSECURE_SKIP_TLS_VERIFY": "true"}
    assert await _askpass(prompt, skip) == (0, "oauth2\n", "")
