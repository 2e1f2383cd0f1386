"""``wsagent port-forward`` and ``wsagent login`` as subprocesses against the real control
plane and agent: many concurrent connections with distinct data, refusals as one line."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, poll_until
from tests.e2e.streams.conftest import EchoServer, StreamWorld

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

Run = Callable[..., Awaitable["Cli"]]


class Cli:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    async def line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Read stderr until a line matches ``pattern``."""
        assert self.proc.stderr is not None
        rx = re.compile(pattern)
        for seen in self.stderr:
            if m := rx.search(seen):
                return m
        async with asyncio.timeout(timeout):
            while raw := await self.proc.stderr.readline():
                text = raw.decode().rstrip("\n")
                self.stderr.append(text)
                if m := rx.search(text):
                    return m
        raise AssertionError(f"{pattern!r} not on stderr: {self.stderr}")

    async def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.stderr += err.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), "\n".join(self.stderr)


@pytest.fixture
async def run_cli(tmp_path: Path) -> AsyncIterator[Run]:
    procs: list[asyncio.subprocess.Process] = []

    async def run(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Cli:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
        full = {**base, "WSAGENT_CONFIG_DIR": str(tmp_path / "cfg"), **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wsagent",
            *args,
            env=full,
            cwd=str(REPO),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        return Cli(proc)

    yield run
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _echo_through(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    data = await reader.read()  # until the echo server's end-of-file comes through
    writer.close()
    return data


async def test_hundred_concurrent_connections_keep_their_data(
    streams: StreamWorld, echo_server: EchoServer, run_cli: Run
) -> None:
    cli = await run_cli(
        "port-forward", "dev", "--tcp", f"0:{echo_server.port}",
        "--url", streams.cp.url, "--token", streams.token,
    )  # fmt: skip
    local = int((await cli.line(r"Forwarding 127\.0\.0\.1:(\d+) to port")).group(1))
    payloads = [os.urandom(1000 + i * 997) + f"conn-{i}".encode() for i in range(100)]
    results = await asyncio.wait_for(
        asyncio.gather(*(_echo_through(local, p) for p in payloads)), 60
    )
    assert [len(r) for r in results] == [len(p) for p in payloads]
    assert results == payloads
    assert echo_server.connections == 100
    cli.proc.send_signal(signal.SIGINT)
    code, _, _ = await cli.finish()
    assert code == 0


async def test_closed_remote_port_is_one_line_and_forwarding_goes_on(
    streams: StreamWorld, echo_server: EchoServer, run_cli: Run, unused_tcp_port: int
) -> None:
    cli = await run_cli(
        "port-forward", "dev", "--tcp", f"0:{unused_tcp_port}", "--tcp", f"0:{echo_server.port}",
        env={"CODER_URL": streams.cp.url, "CODER_SESSION_TOKEN": streams.token},
    )  # fmt: skip
    closed = int((await cli.line(rf"127\.0\.0\.1:(\d+) to port {unused_tcp_port}\b")).group(1))
    open_ = int((await cli.line(rf"127\.0\.0\.1:(\d+) to port {echo_server.port}\b")).group(1))
    assert await _echo_through(closed, b"hello") == b""
    await cli.line(rf"wsagent port-forward: port {unused_tcp_port} is closed in the workspace")
    assert await _echo_through(open_, b"still works") == b"still works"
    cli.proc.send_signal(signal.SIGTERM)
    assert (await cli.finish())[0] == 0


@pytest.mark.parametrize(
    ("workspace", "message"),
    [
        ("nope", "unknown workspace 'nope'"),
        ("dev.other", "workspace 'dev' has no agent 'other' (agents: main)"),
    ],
)
async def test_unknown_workspace_is_one_line(
    streams: StreamWorld, run_cli: Run, workspace: str, message: str
) -> None:
    cli = await run_cli(
        "port-forward", workspace, "--tcp", "0:1", "--url", streams.cp.url, "--token", streams.token
    )
    code, _, err = await cli.finish()
    assert code == 1
    assert err == f"wsagent port-forward: {message}"


async def test_login_writes_a_private_session_file_used_by_later_commands(
    streams: StreamWorld, echo_server: EchoServer, run_cli: Run, tmp_path: Path
) -> None:
    cli = await run_cli("login", streams.cp.url, stdin=f"{streams.token}\n".encode())
    code, _, err = await cli.finish()
    assert code == 0, err
    assert "as alice" in err
    session = tmp_path / "cfg" / "session"
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert stat.S_IMODE(session.parent.stat().st_mode) == 0o700
    assert json.loads(session.read_text()) == {"url": streams.cp.url, "token": streams.token}

    cli = await run_cli("port-forward", "dev", "--tcp", f"0:{echo_server.port}")
    local = int((await cli.line(r"Forwarding 127\.0\.0\.1:(\d+)")).group(1))
    assert await _echo_through(local, b"via the session file") == b"via the session file"
    cli.proc.send_signal(signal.SIGINT)
    await cli.finish()

    session.chmod(0o644)
    cli = await run_cli("port-forward", "dev", "--tcp", "0:1")
    code, _, err = await cli.finish()
    assert code == 1
    assert "is accessible by others (mode 0644)" in err


async def test_bad_and_expired_tokens_are_refused(
    streams: StreamWorld, run_cli: Run, tmp_path: Path
) -> None:
    cli = await run_cli("login", streams.cp.url, "--token", "not-a-real-token-" + "x" * 20)
    code, _, err = await cli.finish()
    assert code == 1
    assert err.startswith("wsagent login: not authorized by ")
    assert not (tmp_path / "cfg" / "session").exists()

    user = await streams.cp.store.get_user_by_name("alice")
    expired = await streams.cp.store.create_user_token(user.id, ttl_seconds=0.001)
    await poll_until(lambda: _is_refused(streams, expired), timeout=5)
    cli = await run_cli(
        "port-forward", "dev", "--tcp", "0:1", "--url", streams.cp.url, "--token", expired
    )
    code, _, err = await cli.finish()
    assert code == 1
    assert "not authorized" in err


async def _is_refused(world: StreamWorld, token: str) -> bool:
    return await world.cp.store.user_by_token(token) is None
