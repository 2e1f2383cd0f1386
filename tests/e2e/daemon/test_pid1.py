"""Acceptance: as PID 1 of a new PID namespace the daemon reaps orphans and forwards signals.

The orphan is made from outside: ``nsenter`` starts ``sh`` inside the namespace, ``sh``
backgrounds a ``sleep`` and exits, so the kernel re-parents the ``sleep`` to the namespace's
PID 1, our reaper. Once it exits it must disappear from /proc; without a reaper it would
stay there as a zombie for as long as the namespace lives.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import poll_until
from tests.e2e.daemon.conftest import SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")),
        reason="needs root and util-linux unshare/nsenter",
    ),
]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("PPid", "0").strip()) == pid:
            found.append(int(entry.name))
    return found


def proc_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def private_kib(pid: int) -> int:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(
        int(line.split()[1])
        for line in rollup
        if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []  # it just ended


async def until(predicate, within: float) -> None:  # type: ignore[no-untyped-def]
    """Poll /proc (it has no change notification) until ``predicate()`` or fail."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_pid1_reaps_orphans_and_forwards_sigterm(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """No zombie is left behind, and SIGTERM to PID 1 stops the agent with code 0."""
    daemon = await spawn_daemon(
        fake_cp.url, agent_token, prefix=("unshare", "--pid", "--fork", "--mount-proc")
    )
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    [init] = children_of(daemon.proc.pid)  # unshare's child: PID 1 inside
    assert proc_field(init, "NSpid").split()[-1] == "1"
    # PID 1 forked the real agent (with --no-reap) instead of running it in-process.
    [agent] = children_of(init)
    assert "--no-reap" in cmdline(agent)
    # The reaper is a bare interpreter, not a copy of the agent: about 3.5 MiB of its own
    # pages (an agent's start-up imports would make it 8 MiB or more).
    assert private_kib(init) < 5 * 1024

    nsenter = await asyncio.create_subprocess_exec(
        "nsenter", "--target", str(init), "--pid", "--", "sh", "-c", "sleep 0.5 & exit 0"
    )
    assert await nsenter.wait() == 0
    orphans = [p for p in children_of(init) if p != agent]
    assert orphans, "the orphan was not re-parented to the namespace's PID 1"
    await until(lambda: not any(Path(f"/proc/{p}").exists() for p in orphans), within=5.0)

    os.kill(init, signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
    await daemon.wait_for_event("agent.signal_received")
    assert daemon.named("agent.signal_received")[0]["signal"] == "SIGTERM"
    assert daemon.named("agent.stopped")


async def test_pid1_does_not_steal_the_agents_child_exit_codes(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """A startup script that orphans a child and exits 3: PID 1 reaps the orphan, yet the
    agent still sees its script's own exit code and reports ``start_error``."""
    fake_cp.startup_script = "sleep 0.3 & exit 3"
    daemon = await spawn_daemon(
        fake_cp.url, agent_token, prefix=("unshare", "--pid", "--fork", "--mount-proc")
    )

    def states() -> list[str]:
        return [r.body["state"] for r in fake_cp.of("POST", "/me/report-lifecycle")]

    await fake_cp.wait_for(lambda: "start_error" in states() or "ready" in states())
    assert states() == ["starting", "start_error"]
    [init] = children_of(daemon.proc.pid)
    [agent] = [p for p in children_of(init) if "--no-reap" in cmdline(p)]
    # The orphaned sleep is re-parented to PID 1, ends, and is reaped: only the agent stays.
    await until(lambda: children_of(init) == [agent], within=5.0)
    os.kill(init, signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0


async def test_a_signal_to_pid1s_process_group_reaches_the_agent_once(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """Ctrl-C on a container's terminal signals PID 1's whole group. The agent must see it
    once (forwarded), and stop gracefully rather than take it for a second signal."""
    daemon = await spawn_daemon(
        fake_cp.url, agent_token, prefix=("unshare", "--pid", "--fork", "--mount-proc")
    )
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    [init] = children_of(daemon.proc.pid)
    [agent] = children_of(init)
    assert os.getpgid(agent) != os.getpgid(init)
    os.killpg(os.getpgid(init), signal.SIGINT)  # also hits unshare, which is fine
    await daemon.wait_for_event("agent.stopped")
    assert len(daemon.named("agent.signal_received")) == 1
    assert not daemon.named("agent.forced_exit")


async def test_coder_agent_no_reap_runs_the_agent_as_pid1_itself(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """CODER_AGENT_NO_REAP=true, as `coder agent` takes it: PID 1 is the agent, no fork."""
    daemon = await spawn_daemon(
        fake_cp.url,
        agent_token,
        prefix=("unshare", "--pid", "--fork", "--mount-proc"),
        CODER_AGENT_NO_REAP="true",
    )
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    [init] = children_of(daemon.proc.pid)
    assert proc_field(init, "NSpid").split()[-1] == "1"
    # Nothing forked: PID 1 runs the agent. Its own short-lived children (ssh-keygen making
    # the host key at the first connection) come and go; a reaper's agent child would stay.
    await poll_until(lambda: children_of(init) == [], timeout=10)
    assert daemon.named("agent.starting")[0]["pid"] == 1
    os.kill(init, signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0
