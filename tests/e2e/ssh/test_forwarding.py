"""Forwarding through the control plane with the real OpenSSH client: ``ssh -L`` to a
server in the workspace, ``ssh -R`` back to one on the client's side, ``ssh -A`` with a
real ssh-agent, and a stalled reader behind ``ssh -L`` that must not grow memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import poll_until
from tests.e2e.ssh.conftest import SSH, SSHWorld
from tests.e2e.streams.conftest import in_flight_bound

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_server(body: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def http_get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return response.partition(b"\r\n\r\n")[2]


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


@contextlib.asynccontextmanager
async def background_ssh(world: SSHWorld, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    assert SSH is not None
    proc = await asyncio.create_subprocess_exec(
        SSH,
        *world.options(),
        "-o",
        "ExitOnForwardFailure=yes",
        *args,
        env=world.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def test_local_forward_reaches_a_server_in_the_workspace(world: SSHWorld) -> None:
    server = await http_server(b"served from the workspace")
    port = server.sockets[0].getsockname()[1]
    local = free_port()
    async with server, background_ssh(world, "-N", "-L", f"{local}:127.0.0.1:{port}", "dev"):
        await poll_until(lambda: accepts(local), timeout=20)
        bodies = await asyncio.gather(*(http_get(local) for _ in range(5)))
    assert bodies == [b"served from the workspace"] * 5


async def test_remote_forward_reaches_a_server_on_the_client(world: SSHWorld) -> None:
    server = await http_server(b"served from the client")
    port = server.sockets[0].getsockname()[1]
    remote = free_port()
    fetch = (
        "import time, urllib.request\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        print(urllib.request.urlopen('http://127.0.0.1:{remote}/').read().decode())\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
    )
    async with server:
        code, out, err = await world.ssh(
            "-o", "ExitOnForwardFailure=yes", "-R", f"127.0.0.1:{remote}:127.0.0.1:{port}",
            "dev", f"python3 -c {shlex.quote(fetch)}",
        )  # fmt: skip
    assert code == 0, err
    assert out == b"served from the client\n"


async def test_agent_forwarding_exposes_the_clients_keys(world: SSHWorld, tmp_path: Path) -> None:
    agent_bin, add, keygen = (shutil.which(p) for p in ("ssh-agent", "ssh-add", "ssh-keygen"))
    if not (agent_bin and add and keygen and SSH):
        pytest.skip("ssh-agent tools not installed")
    sock = tmp_path / "agent.sock"
    ssh_agent = await asyncio.create_subprocess_exec(
        agent_bin, "-D", "-a", str(sock),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await poll_until(sock.exists, timeout=10)
        key = tmp_path / "id_ed25519"
        code, _, err = await world.run(keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        assert code == 0, err
        env = {**world.env(), "SSH_AUTH_SOCK": str(sock)}
        proc = await asyncio.create_subprocess_exec(
            add, str(key), env=env, stderr=asyncio.subprocess.DEVNULL
        )
        assert await proc.wait() == 0
        code, out, err = await world.run_env(
            env, SSH, *world.options(), "-A", "dev", 'ssh-add -L; echo "sock=$SSH_AUTH_SOCK"'
        )
        assert code == 0, err
        public = key.with_suffix(".pub").read_text().split()[1]
        assert public.encode() in out
        remote_sock = out.decode().rsplit("sock=", 1)[1].strip()
        assert remote_sock and remote_sock != str(sock)
        # Without -A there is no agent in the session.
        code, out, _ = await world.run_env(
            env, SSH, *world.options(), "dev", "echo x${SSH_AUTH_SOCK}x"
        )
        assert out == b"xx\n"
    finally:
        ssh_agent.terminate()
        await ssh_agent.wait()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_stalled_reader_behind_local_forward_keeps_memory_flat(world: SSHWorld) -> None:
    """A fast producer in the workspace, a client that connects through ``ssh -L`` and
    never reads: agent and server RSS stay flat, and the producer is held back."""
    sent = [0]
    blocked = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def produce(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        chunk = os.urandom(65536)
        with contextlib.suppress(OSError):
            while True:
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 2.0)
                except TimeoutError:
                    blocked.set()
                    await writer.drain()
                sent[0] += len(chunk)

    server = await asyncio.start_server(produce, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    local = free_port()
    async with server, background_ssh(world, "-N", "-L", f"{local}:127.0.0.1:{port}", "dev"):
        await poll_until(lambda: accepts(local), timeout=20)
        stalled = socket.create_connection(("127.0.0.1", local))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            await asyncio.wait_for(blocked.wait(), 60)
            agent_before = _rss_kib(world.agent.proc.pid)
            server_before = _rss_kib(os.getpid())
            sent_before = sent[0]
            with contextlib.suppress(TimeoutError):  # watch it for a while: nothing moves
                await asyncio.wait_for(asyncio.Event().wait(), 2.0)
            assert sent[0] - sent_before <= 4 * 65536
            assert _rss_kib(world.agent.proc.pid) - agent_before < 4096
            assert _rss_kib(os.getpid()) - server_before < 4096
            # In flight: four TCP hops' kernel buffers (producer, agent, server, ssh -L's
            # socket), the SSH channel's window and the socket pair's buffers.
            assert sent_before < in_flight_bound(4), sent_before
        finally:
            stalled.close()
            for writer in writers:
                writer.transport.abort()
