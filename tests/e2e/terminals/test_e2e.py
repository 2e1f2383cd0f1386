"""Terminals end to end: a websocket client on /pty, the real control plane in-process and
the real daemon as a subprocess, all on 127.0.0.1 with real PTYs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import AgentProcess, ControlPlane, agent_env, poll_until
from tests.e2e.terminals.harness import Screen

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

# Every /pty socket a test opens, closed when the test ends: a socket left to the garbage
# collector warns later, inside whichever test happens to be running then.
_opened: list[ClientConnection] = []


@pytest.fixture(autouse=True)
async def _close_opened_sockets() -> AsyncIterator[None]:
    yield
    while _opened:
        _opened.pop().transport.abort()
    for _ in range(3):  # let the aborted transports run their connection_lost callbacks
        await asyncio.sleep(0)


class Setup:
    def __init__(self, cp: ControlPlane, agent: AgentProcess, agent_id: str, token: str) -> None:
        self.cp = cp
        self.agent = agent
        self.agent_id = agent_id
        self.token = token

    def url(self, reconnect: str, **query: Any) -> str:
        base = self.cp.url.replace("http://", "ws://")
        q = urlencode({"reconnect": reconnect, **query})
        return f"{base}/api/v2/workspaceagents/{self.agent_id}/pty?{q}"

    async def open(self, reconnect: str | None = None, **query: Any) -> Pty:
        ws = await connect(
            self.url(reconnect or str(uuid.uuid4()), **query),
            additional_headers={"Coder-Session-Token": self.token},
            compression=None,
            open_timeout=10,
            close_timeout=2,
        )
        _opened.append(ws)
        return Pty(ws)


class Pty(Screen):
    """A user's ``/pty`` socket."""


async def _connected(cp: ControlPlane, agent_id: str, token: str) -> bool:
    body = await cp.get_agent_json(agent_id, token)
    return bool(body["status"] == "connected")


async def _setup(
    cp: ControlPlane,
    start_agent: Any,
    tmp_path: Path,
    user: str = "alice",
    spec: dict[str, Any] | None = None,
    hush: bool = True,
    **env: str,
) -> Setup:
    _, token = await cp.create_user(user)
    agents = await cp.create_workspace(user, "dev", [{"name": "main", **(spec or {})}])
    agent_id, agent_token = agents["main"]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if hush:
        (home / ".hushlogin").touch()
    extra = {"HOME": str(home), "PS1": "$ ", **env}
    agent = await start_agent(agent_env(cp.url, agent_token, tmp_path / "logs", **extra))
    await poll_until(lambda: _connected(cp, agent_id, token), timeout=20)
    return Setup(cp, agent, agent_id, token)


@pytest.fixture
async def term(control_plane: ControlPlane, start_agent: Any, tmp_path: Path) -> Setup:
    return await _setup(control_plane, start_agent, tmp_path)


async def test_echo_hello_round_trips(term: Setup) -> None:
    pty = await term.open()
    await pty.type("echo hel''lo\r")
    await pty.expect(rb"hello\r\n")


async def test_stty_size_reflects_resize(term: Setup) -> None:
    pty = await term.open(height=20, width=70, command="sh")
    await pty.type("stty size\r")
    await pty.expect(rb"\b20 70\r\n")
    await pty.type(rows=41, cols=132)
    await pty.type("stty size\r")
    await pty.expect(rb"\b41 132\r\n")


async def test_exit_code_closes_the_session(term: Setup) -> None:
    pty = await term.open(command="sh")
    await pty.type("seq 1 5000; exit 3\r")
    code, reason = await pty.closed()
    assert (code, reason) == (1000, "process exited with code 3")
    assert pty.output.endswith(b"4999\r\n5000\r\n")


async def test_reattach_replays_scrollback_across_server_restart(term: Setup) -> None:
    reconnect = str(uuid.uuid4())
    first = await term.open(reconnect, command="sh")
    await first.type("echo mark-$((40+2))\r")
    await first.expect(rb"mark-42\r\n")
    await first.ws.close()

    second = await term.open(reconnect)
    await second.expect(rb"mark-42\r\n")  # replayed scrollback
    await second.ws.close()

    await term.cp.restart()
    await poll_until(lambda: _connected(term.cp, term.agent_id, term.token), timeout=30)
    third = await term.open(reconnect)
    await third.expect(rb"mark-42\r\n")
    await third.type("echo after-$((1+1))\r")
    await third.expect(rb"after-2\r\n")


async def test_ten_sessions_concurrently(term: Setup) -> None:
    ptys = await asyncio.gather(*(term.open(command="sh") for _ in range(10)))
    await asyncio.gather(*(p.type(f"echo s{i}-$((i=7*{i}))\r") for i, p in enumerate(ptys)))
    await asyncio.gather(*(p.expect(rf"s{i}-{7 * i}\r\n".encode()) for i, p in enumerate(ptys)))


async def test_another_user_gets_404_and_bad_requests_are_400(term: Setup) -> None:
    _, mallory = await term.cp.create_user("mallory")
    base = term.cp.url
    path = f"/api/v2/workspaceagents/{term.agent_id}/pty"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        other = await client.get(
            path, params={"reconnect": str(uuid.uuid4())}, headers={"Coder-Session-Token": mallory}
        )
        assert other.status_code == 404
        anonymous = await client.get(path, params={"reconnect": str(uuid.uuid4())})
        assert anonymous.status_code == 401
        bad = await client.get(
            path, params={"reconnect": "nope"}, headers={"Coder-Session-Token": term.token}
        )
        assert bad.status_code == 400
        assert bad.json() == {
            "message": "Query param 'reconnect' must be a valid UUID.",
            "validations": [{"field": "reconnect", "detail": "invalid UUID"}],
        }
        # The dial-back endpoint refuses an unknown session even with a valid agent token.
        dial = await client.get("/api/v2/workspaceagents/me/pty-dial", params={"session": "x"})
        assert dial.status_code == 401


async def test_a_nul_byte_in_the_command_is_400_and_the_agent_runs_on(term: Setup) -> None:
    path = f"/api/v2/workspaceagents/{term.agent_id}/pty"
    async with httpx.AsyncClient(base_url=term.cp.url, timeout=10) as client:
        bad = await client.get(
            path,
            params={"reconnect": str(uuid.uuid4()), "command": "echo a\0b"},
            headers={"Coder-Session-Token": term.token},
        )
    assert bad.status_code == 400
    assert bad.json() == {
        "message": "Query param 'command' must not contain a NUL byte.",
        "validations": [{"field": "command", "detail": "contains a NUL byte"}],
    }
    pty = await term.open(command="echo fine-$((40+2))")
    await pty.expect(rb"fine-42")
    assert term.agent.proc.returncode is None


async def test_unparsable_dimensions_default_to_80(term: Setup) -> None:
    pty = await term.open(height="tall", width="99999", command="stty size")
    await pty.expect(rb"80 80\r\n")
    code, reason = await pty.closed()
    assert (code, reason) == (1000, "process exited with code 0")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_stalled_reader_holds_memory_flat_and_others_respond(term: Setup) -> None:
    pid = term.agent.proc.pid
    # A reader that never reads: small client-side queue so it stops reading quickly.
    stalled_ws = await connect(
        term.url(str(uuid.uuid4()), command="yes"),
        additional_headers={"Coder-Session-Token": term.token},
        compression=None,
        max_queue=1,
        close_timeout=1,
    )
    other = await term.open(command="sh")
    await other.type("echo warm-$((1))\r")
    await other.expect(rb"warm-1\r\n")
    # Measure once the client has stopped reading (its one-message queue is full): from
    # then on only bounded buffers can fill.
    await poll_until(lambda: stalled_ws.recv_messages.paused, timeout=10)
    before = _rss_kib(pid)
    # The control plane runs in this process: its relay must not buffer either.
    server_before = _rss_kib(os.getpid())
    latencies = []
    for i in range(20):
        started = time.monotonic()
        await other.type(f"echo p-$(({i}+1000))\r")
        await other.expect(rf"p-{i + 1000}\r\n".encode(), timeout=5)
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.1)
    after = _rss_kib(pid)
    server_after = _rss_kib(os.getpid())
    assert after - before < 4096, f"agent RSS grew from {before} to {after} KiB"
    assert server_after - server_before < 4096, (server_before, server_after)
    assert max(latencies) < 1.0, latencies
    stalled_ws.transport.abort()


async def test_stats_show_the_traffic(
    make_control_plane: Any, start_agent: Any, tmp_path: Path
) -> None:
    cp = await make_control_plane(stats_interval=0.5)
    setup = await _setup(cp, start_agent, tmp_path)
    pty = await setup.open(command="sh")
    await pty.type("echo traffic-$((2*21))\r")
    await pty.expect(rb"traffic-42\r\n")

    async def reported() -> Any:
        # Input and output can land in different windows (and a later window may be merged
        # into a stored row), so wait until both directions have been reported.
        rows = await cp.store.list_stats(setup.agent_id)
        rows = [r for r in rows if r.conns_by_proto.get("reconnecting_pty")]
        both = sum(r.rx_bytes for r in rows) > 0 and sum(r.tx_bytes for r in rows) > 0
        return rows if both else None

    rows = await poll_until(reported, timeout=15)
    assert sum(r.rx_bytes for r in rows) > 0
    assert sum(r.tx_bytes for r in rows) > 0
    assert sum(r.rx_packets for r in rows) > 0
    assert max(r.num_comms for r in rows) >= 1


async def test_wsagent_terminal_command(term: Setup) -> None:
    import sys

    from tests.conftest import REPO

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "terminal",
        "--url",
        term.cp.url,
        "--token",
        term.token,
        "--agent",
        term.agent_id,
        "--command",
        "read line; echo got-$line-$((3*3)); exit 5",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO),
    )
    out, err = await asyncio.wait_for(proc.communicate(b"abc\n"), 30)
    assert b"got-abc-9" in out, (out, err)
    assert proc.returncode == 5
    assert b"re-attach with --reconnect" in err


async def test_login_shell_prints_the_motd(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    motd = tmp_path / "motd"
    motd.write_text("Welcome to dev\nBe nice\n")
    setup = await _setup(
        control_plane, start_agent, tmp_path, spec={"motd_file": str(motd)}, hush=False
    )
    pty = await setup.open()
    await pty.expect(rb"^Welcome to dev\r\nBe nice\r\n")
    await pty.type("echo $TERM-$((1+1))\r")
    await pty.expect(rb"xterm-256color-2\r\n")


async def test_session_cap_reported_to_the_user(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    setup = await _setup(control_plane, start_agent, tmp_path, CODER_AGENT_PTY_MAX_SESSIONS="1")
    first = await setup.open(command="sh")
    await first.type("echo one-$((0+1))\r")
    await first.expect(rb"one-1\r\n")
    second = await setup.open(command="sh")
    code, reason = await second.closed()
    assert code == 1013
    assert "terminal session limit reached" in reason
    assert "CODER_AGENT_PTY_MAX_SESSIONS" in reason


async def test_agent_shutdown_stops_session_processes(term: Setup) -> None:
    pty = await term.open(command="echo pid=$$; exec sleep 300")
    match = await pty.expect(rb"pid=(\d+)\r\n")
    pid = int(match.group(1))
    assert Path(f"/proc/{pid}").exists()
    assert await term.agent.terminate() == 0
    await poll_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=5)


async def test_yes_does_not_starve_keystrokes_or_the_coordinate_socket(term: Setup) -> None:
    flood = await term.open(command="yes")
    received = 0

    async def drain() -> None:
        nonlocal received
        async for message in flood.ws:
            received += len(message)

    reader = asyncio.create_task(drain())
    try:
        await poll_until(lambda: received > 4 << 20, timeout=10)  # `yes` is flowing
        other = await term.open(command="sh")
        latencies = []
        for i in range(20):
            started = time.monotonic()
            await other.type(f"echo k-$(({i}+500))\r")
            await other.expect(rf"k-{i + 500}\r\n".encode(), timeout=5)
            latencies.append(time.monotonic() - started)
        # The coordinate socket answers too: listening ports are asked over it.
        async with httpx.AsyncClient(base_url=term.cp.url, timeout=10) as client:
            started = time.monotonic()
            ports = await client.get(
                f"/api/v2/workspaceagents/{term.agent_id}/listening-ports",
                headers={"Coder-Session-Token": term.token},
            )
            ports_seconds = time.monotonic() - started
        assert ports.status_code == 200, ports.text
        before = received
        await poll_until(lambda: received > before, timeout=5)  # still flowing
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    assert sorted(latencies)[len(latencies) // 2] < 0.2, latencies
    assert max(latencies) < 1.0, latencies
    assert ports_seconds < 2.0


async def test_wsagent_terminal_on_a_tty_resizes_on_sigwinch(term: Setup) -> None:
    import sys

    from ptyprocess import PtyProcess

    from tests.conftest import REPO

    argv = [sys.executable, "-m", "wsagent", "terminal", "--url", term.cp.url]
    argv += ["--token", term.token, "--agent", term.agent_id, "--command", "sh"]
    client = PtyProcess.spawn(argv, cwd=str(REPO), dimensions=(24, 80))
    os.set_blocking(client.fd, False)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(client.fd, readable.set)
    output = bytearray()

    async def expect(pattern: bytes, since: int = 0) -> None:
        deadline = loop.time() + 15
        while not re.search(pattern, output[since:]):
            remaining = deadline - loop.time()
            assert remaining > 0, f"{pattern!r} not in {bytes(output[-300:])!r}"
            readable.clear()
            try:
                output.extend(os.read(client.fd, 65536))
            except BlockingIOError:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(readable.wait(), remaining)
            except OSError:
                return

    try:
        # Type only once the remote prompt is there: going raw flushes pending input.
        await expect(rb"[#$] $")
        os.write(client.fd, b"stty size\r")
        await expect(rb"\b24 80\r\n[#$] $")
        client.setwinsize(31, 101)  # the kernel sends SIGWINCH to the client
        # The signal and the keys race inside the client; ask until the new size shows.
        for _ in range(50):
            mark = len(output)
            os.write(client.fd, b"stty size\r")
            await expect(rb"\b\d+ \d+\r\n[#$] $", since=mark)
            if re.search(rb"\b31 101\r\n", output[mark:]):
                break
        else:
            raise AssertionError(f"no resize: {bytes(output[-300:])!r}")
        os.write(client.fd, b"exit 7\r")
        await expect(rb"re-attach with --reconnect")
    finally:
        loop.remove_reader(client.fd)
    await poll_until(lambda: not client.isalive(), timeout=10)
    assert client.exitstatus == 7, bytes(output[-600:])
