"""Agent-side terminal sessions over real dial-back WebSockets on 127.0.0.1 and real PTYs.

The server end is a stand-in (harness.DialBackServer) that speaks the dial-back protocol;
the agent end is the real SessionManager + DialBackHandler.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from agent.pty import CommandBuilder, FlowLimits
from tests.conftest import poll_until
from tests.e2e.terminals.harness import SH_ENV, agentish
from tests.fakes.clock import FakeClock

pytestmark = pytest.mark.e2e


def _id() -> str:
    return str(uuid.uuid4())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the session reaps it, so check /proc.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def _wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _wait_stable(predicate, hold: float, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``predicate`` has held continuously for ``hold`` seconds."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        since = None
        while since is None or loop.time() - since < hold:
            held = predicate()
            since = (since or loop.time()) if held else None
            await asyncio.sleep(0.01)


async def test_echo_round_trip_and_stats() -> None:
    async with agentish() as agent:
        term = await agent.open(_id())
        await term.type("echo hel''lo\r")
        await term.expect(rb"hello\r\n")
        assert agent.stats.opened and agent.stats.opened[0][1] == "reconnecting_pty"
        assert sum(agent.stats.rx) > 0
        assert sum(agent.stats.tx) >= len(b"hello")


async def test_resize_applies_only_with_both_dimensions() -> None:
    async with agentish() as agent:
        term = await agent.open(_id(), rows=24, cols=80)
        await term.type("", rows=33, cols=101)
        await term.type("", rows=0, cols=55)  # ignored: one dimension is zero
        await term.type("stty size\r")
        await term.expect(rb"\b33 101\r\n")


async def test_exit_code_closes_after_all_output() -> None:
    async with agentish() as agent:
        pty_id = _id()
        term = await agent.open(pty_id, command="seq 1 30000; exit 3")
        code, reason = await term.closed()
        assert code == 1000
        assert reason == "process exited with code 3"
        # Every byte made it out before the close (Coder lost the tail here).
        assert term.output.endswith(b"29999\r\n30000\r\n")
        await _wait_for(lambda: pty_id not in agent.manager.sessions)
        assert agent.groups == {}


async def test_reattach_replays_scrollback_and_shares_output() -> None:
    async with agentish() as agent:
        pty_id = _id()
        first = await agent.open(pty_id)
        await first.type("echo marker-$((6*7))\r")
        await first.expect(rb"marker-42")
        await first.ws.close()
        await _wait_for(lambda: agent.manager.sessions[pty_id].attachments == 0)

        second = await agent.open(pty_id)
        await second.expect(rb"marker-42")  # replayed
        third = await agent.open(pty_id)
        await third.expect(rb"marker-42")
        await second.type("echo both-$((1+1))\r")
        await second.expect(rb"both-2")
        await third.expect(rb"both-2")  # output goes to every attachment
        assert len(agent.manager.sessions) == 1


async def test_session_cap_reported_on_the_socket() -> None:
    async with agentish(max_sessions=2) as agent:
        for _ in range(2):
            await agent.open(_id())
        refused = await agent.open(_id())
        code, reason = await refused.closed()
        assert code == 1013
        assert "limit" in reason and "2" in reason
        assert len(reason.encode()) <= 123
        assert len(agent.manager.sessions) == 2


async def test_idle_timeout_after_last_attachment() -> None:
    clock = FakeClock()
    async with agentish(idle_timeout=300.0, clock=clock) as agent:
        pty_id = _id()
        term = await agent.open(pty_id)
        await term.type("echo u''p\r")
        await term.expect(rb"up\r\n")
        session = agent.manager.sessions[pty_id]
        pid = session.child.pid
        assert pid in agent.groups
        await term.ws.close()
        await poll_until(lambda: session.attachments == 0, timeout=5)
        await clock.advance(299.0)
        assert not session.ending  # not idle long enough yet
        await clock.advance(1.0)
        code = await asyncio.wait_for(session.wait_ended(), 5)
        assert code is not None and code >= 128  # killed by a signal
        assert pty_id not in agent.manager.sessions
        assert not _alive(pid)
        assert agent.groups == {}


async def test_attached_session_does_not_idle_out() -> None:
    clock = FakeClock()
    async with agentish(idle_timeout=0.2, clock=clock) as agent:
        pty_id = _id()
        term = await agent.open(pty_id)
        await clock.advance(0.5)  # several idle timeouts while attached
        await term.type("echo still-here\r")
        await term.expect(rb"still-here\r\n")


async def test_motd_for_login_shell(tmp_path) -> None:  # type: ignore[no-untyped-def]
    builder = CommandBuilder(
        environment=lambda: {**SH_ENV, "HOME": str(tmp_path)},
        motd=lambda: "Welcome to the workspace\n",
        shell=lambda: "/bin/sh",
        home=lambda: str(tmp_path),
    )
    async with agentish(builder=builder) as agent:
        term = await agent.open(_id())
        await term.expect(rb"^Welcome to the workspace\r\n")
        await term.type("echo $TERM\r")
        await term.expect(rb"xterm-256color\r\n")


async def test_invalid_input_closes_only_that_connection() -> None:
    async with agentish() as agent:
        pty_id = _id()
        term = await agent.open(pty_id)
        await term.ws.send(b'"not an object"')
        code, _ = await term.closed()
        assert code == 1007
        again = await agent.open(pty_id)
        await again.type("echo al''ive\r")
        await again.expect(rb"alive\r\n")


@pytest.mark.timeout(60)
async def test_stalled_reader_pauses_session_and_others_stay_responsive() -> None:
    limits = FlowLimits(high_water=64 * 1024, low_water=16 * 1024)
    # The stall timeout must outlast the pings below even on a loaded machine, or the
    # hopeless reader is dropped (and the session resumes) before the pause is checked.
    async with agentish(limits=limits, stall_timeout=6.0) as agent:
        pty_id = _id()
        stalled = await agent.open(pty_id, command="yes")
        await _wait_for(lambda: pty_id in agent.manager.sessions)
        session = agent.manager.sessions[pty_id]
        # Nobody reads `stalled`: once the socket buffers on both ends are full the session
        # must stay paused instead of buffering.
        await _wait_stable(lambda: session.paused, hold=0.5, timeout=20)
        other = await agent.open(_id())
        for i in range(5):
            await other.type(f"echo pi''ng-{i}\r")
            await other.expect(rf"ping-{i}\r\n".encode(), timeout=5)
        assert session.paused
        # The hopeless reader is disconnected after the stall timeout (its socket is never
        # read here, so the agent sees only that its send is blocked); the session lives on
        # and reads again.
        await _wait_for(lambda: session.attachments == 0, timeout=15)
        assert pty_id in agent.manager.sessions
        await _wait_for(lambda: not session.paused, timeout=5)
        del stalled


async def test_every_attachment_gets_all_output_before_the_exit_close() -> None:
    async with agentish() as agent:
        pty_id = _id()
        first = await agent.open(pty_id, command="sh")
        second = await agent.open(pty_id)
        await first.type("seq 1 20000; exit 4\r")
        for term in (first, second):
            code, reason = await term.closed()
            assert (code, reason) == (1000, "process exited with code 4")
            assert term.output.endswith(b"19999\r\n20000\r\n")
            assert b"\r\n10000\r\n" in term.output


def _copies_of_this_process() -> list[int]:
    """Children of this process running this very program: a fork that returned into our
    code instead of exec'ing would be one."""
    me = os.getpid()
    cmdline = Path(f"/proc/{me}/cmdline").read_bytes()
    copies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != me:
                continue
            if Path(f"/proc/{entry}/cmdline").read_bytes() == cmdline:
                copies.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return copies


async def test_a_nul_byte_in_the_command_is_refused_before_any_fork() -> None:
    async with agentish() as agent:
        refused = await agent.open(_id(), command="echo a\0b")
        code, reason = await refused.closed()
        assert code == 1011 and "NUL" in reason
        assert agent.manager.sessions == {}
        assert _copies_of_this_process() == []
        ok = await agent.open(_id(), command="echo still-$((20+22))")
        await ok.expect(rb"still-42")


async def test_a_child_that_cannot_exec_exits_instead_of_returning() -> None:
    """exec fails inside the child (not an executable format): the child reports it and
    exits; it never comes back as a second copy of this process."""
    # A short path, so the whole error fits in a WebSocket close reason.
    tmp_path = Path(tempfile.mkdtemp(prefix="ws", dir="/tmp"))
    bogus = tmp_path / "sh"
    bogus.write_bytes(b"\x7fELF\x00\x00garbage")
    bogus.chmod(0o755)
    builder = CommandBuilder(
        environment=lambda: SH_ENV, shell=lambda: str(bogus), home=lambda: str(tmp_path)
    )
    me = os.getpid()
    async with agentish(builder=builder) as agent:
        refused = await agent.open(_id())
        code, reason = await refused.closed()
        assert os.getpid() == me
        assert code == 1011 and "Exec format error" in reason, reason
        assert agent.manager.sessions == {}
        assert _copies_of_this_process() == []
    shutil.rmtree(tmp_path)
