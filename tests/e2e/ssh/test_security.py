"""Who may SSH in, host-key verification, and failures: another user, a revoked token, a
wrong host key, the agent killed mid-transfer, a control-plane restart, the key's
persistence across agent restarts."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import agent_env, poll_until
from tests.e2e.ssh.conftest import SSH, SSHWorld, user_get, write_known_hosts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


async def test_another_user_is_refused_everywhere(world: SSHWorld) -> None:
    code, out, err = await world.ssh("dev", "echo should-not-run", token=world.other_token)
    assert code == 255 and out == b""
    assert b"wsagent ssh: unknown workspace 'dev'" in err
    for path in (
        f"/api/v2/workspaceagents/{world.agent_id}/ssh-host-key",
        f"/api/v2/workspaceagents/{world.agent_id}/stream?target=ssh",
    ):
        response = await user_get(world, path, world.other_token)
        assert response.status_code == 404, path
        assert response.json()["message"].startswith("Resource not found")


async def test_a_revoked_token_is_refused(world: SSHWorld) -> None:
    code, _, err = await world.ssh("dev", "true")
    assert code == 0, err
    assert await world.cp.store.revoke_user_token(world.token)
    code, out, err = await world.ssh("dev", "echo should-not-run")
    assert code == 255 and out == b""
    assert b"not authorized" in err


async def test_host_key_is_verified_against_the_published_one(world: SSHWorld) -> None:
    assert world.public_key.startswith("ssh-ed25519 ")
    wrong = world.client_dir / "wrong_known_hosts"
    write_known_hosts(wrong, OTHER_KEY)
    assert SSH is not None
    code, out, err = await world.run(SSH, *world.options(wrong), "dev", "echo should-not-run")
    assert code == 255 and out == b""
    assert b"Host key verification failed" in err or b"HOST IDENTIFICATION HAS CHANGED" in err
    key_file = world.state_dir / "ssh_host_ed25519_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def test_agent_killed_mid_transfer_is_a_clean_error_within_seconds(
    world: SSHWorld,
) -> None:
    assert SSH is not None
    proc = await asyncio.create_subprocess_exec(
        SSH, *world.options(), "dev", "cat > /dev/null",
        env=world.env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    chunk = b"x" * (1 << 20)
    for _ in range(8):  # the transfer is under way
        proc.stdin.write(chunk)
        await asyncio.wait_for(proc.stdin.drain(), 30)
    world.agent.kill()
    killed_at = time.monotonic()

    stdin = proc.stdin

    async def keep_writing() -> None:
        try:
            while True:
                stdin.write(chunk)
                await stdin.drain()
        except (ConnectionError, OSError):
            return

    writer = asyncio.create_task(keep_writing())
    code = await asyncio.wait_for(proc.wait(), 30)
    elapsed = time.monotonic() - killed_at
    writer.cancel()
    err = await proc.stderr.read()
    assert code == 255, err
    assert elapsed < 10, elapsed
    assert b"wsagent ssh:" in err  # one line from the ProxyCommand saying why


async def test_new_connections_work_after_a_control_plane_restart(world: SSHWorld) -> None:
    code, _, err = await world.ssh("dev", "true")
    assert code == 0, err
    await world.cp.restart()
    await poll_until(world.connected, timeout=30)
    code, out, err = await world.ssh("dev", "echo after-restart")
    assert (code, out) == (0, b"after-restart\n"), err


async def test_host_key_survives_an_agent_restart(
    world: SSHWorld, start_agent: Any, tmp_path: Path
) -> None:
    await world.agent.terminate()
    env = agent_env(world.cp.url, world.agent_token, tmp_path / "logs2", **world.agent_settings())
    world.agent = await start_agent(env)
    await poll_until(world.connected, timeout=30)
    code, out, err = await world.ssh("dev", "echo same-key")
    assert (code, out) == (0, b"same-key\n"), err
    path = f"/api/v2/workspaceagents/{world.agent_id}/ssh-host-key"
    response = await user_get(world, path, world.token)
    assert response.json()["public_key"] == world.public_key
