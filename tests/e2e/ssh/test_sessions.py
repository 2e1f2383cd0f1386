"""SSH sessions through the control plane with the real OpenSSH client: exec without a
PTY (bytes, stderr, exit status), an interactive login on a real local terminal (resize,
Ctrl-C, exit status), the session environment, and the wsagent commands around ssh."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import poll_until
from tests.e2e.ssh.conftest import SSH, LocalTerminal, SSHWorld, make_ssh_world

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MIB = 1 << 20


async def test_exec_keeps_bytes_stderr_and_exit_status(world: SSHWorld) -> None:
    data = os.urandom(64 * MIB)
    code, out, err = await world.ssh(
        "dev", "cat > upload; sha256sum upload; echo to-stderr >&2; exit 5", stdin=data
    )
    assert code == 5, err
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert err == b"to-stderr\n"
    # And back: binary stdout, byte for byte.
    code, out, err = await world.ssh("dev", "cat upload")
    assert code == 0, err
    assert out == data


async def test_exit_by_signal_and_environment(world: SSHWorld) -> None:
    code, _, _ = await world.ssh("dev", "kill -TERM $$")
    assert code == 255  # OpenSSH reports a remote signal as 255 ("killed by signal")
    code, out, err = await world.ssh(
        "dev",
        'echo "$SSH_CLIENT,$SSH_CONNECTION,${SSH_TTY-none},$CODER,$PWD,$SSH_ORIGINAL_COMMAND"',
    )
    assert code == 0, err
    client, connection, tty, coder, pwd, original = out.decode().strip().split(",", 5)
    assert re.fullmatch(r"127\.0\.0\.1 \d+ 22", client), client
    assert re.fullmatch(r"127\.0\.0\.1 \d+ 127\.0\.0\.1 22", connection), connection
    assert client.split()[1] == connection.split()[1] != "0"
    assert tty == "none"  # no PTY, no SSH_TTY
    assert coder == "true"  # the session environment, as for terminals
    assert original.startswith('echo "$SSH_CLIENT,')
    assert pwd == str(world.home)


async def test_interactive_login_resize_ctrl_c_and_exit_status(world: SSHWorld) -> None:
    (world.home / ".hushlogin").unlink()
    (world.home / "motd").write_text("Welcome to the dev workspace\n")
    assert SSH is not None
    term = await LocalTerminal.start(
        [SSH, *world.options(), "-tt", "dev"],
        {**world.env(), "TERM": "xterm", "PS1": "$ "},
        rows=24,
        cols=80,
    )
    try:
        await term.expect(rb"^Welcome to the dev workspace\r\n")
        await term.expect(rb"[#$] ")
        term.type(b"echo hel''lo $SSH_TTY\r")
        await term.expect(rb"hello /dev/pts/\d+\r\n")
        term.type(b"stty size\r")
        await term.expect(rb"\b24 80\r\n")
        term.resize(40, 132)
        term.type(b"stty size\r")
        await term.expect(rb"\b40 132\r\n")
        term.type(b"sleep 67; echo not-$((1))-interrupted\r")
        await term.expect(rb"sleep 67[^\n]*\r\n")
        # The echo comes before the shell has made sleep the terminal's foreground group; a
        # Ctrl-C sent in between would reach the shell instead. Wait for the foreground sleep.
        await poll_until(_foreground_sleep, timeout=15)
        term.type(b"\x03")  # Ctrl-C reaches sleep through the remote line discipline
        term.type(b"echo after-$((20+22))\r")
        await term.expect(rb"after-42\r\n")
        assert b"not-1-interrupted" not in term.output
        term.type(b"exit 3\r")
        assert await term.wait() == 3
    finally:
        term.close()


async def test_login_shell_shows_the_motd_unless_hushed(world: SSHWorld) -> None:
    (world.home / "motd").write_text("hello from the motd\n")
    code, out, err = await world.ssh("-tt", "dev", stdin=b"exit 0\n")
    assert code == 0, err
    assert b"hello from the motd" not in out  # ~/.hushlogin exists
    (world.home / ".hushlogin").unlink()
    code, out, err = await world.ssh("-tt", "dev", stdin=b"exit 0\n")
    assert code == 0, err
    assert out.startswith(b"hello from the motd\r\n")
    code, out, _ = await world.ssh("-tt", "dev", "echo a command")
    assert b"motd" not in out  # only login shells show it


async def test_wsagent_ssh_runs_the_system_ssh_with_the_published_key(world: SSHWorld) -> None:
    code, out, err = await world.run(
        sys.executable, "-m", "wsagent", "ssh", "dev", "--", "echo", "via-wsagent-ssh"
    )
    assert (code, out) == (0, b"via-wsagent-ssh\n"), err
    known = (world.client_dir / "cfg" / "known_hosts").read_text()
    assert known == f"wsagent.dev {world.public_key}\n"


async def test_config_ssh_writes_a_managed_block_that_ssh_uses(world: SSHWorld) -> None:
    config = world.client_dir / "ssh_config"
    mine = "Host elsewhere\n  User me\n"
    config.write_text(mine)
    for _ in range(2):  # the second run replaces the block in place
        code, _, err = await world.run(
            sys.executable, "-m", "wsagent", "config-ssh", "--ssh-config-file", str(config)
        )
        assert code == 0, err
    text = config.read_text()
    assert text.startswith(mine)
    assert text.count("START-WSAGENT") == 1
    assert "Host wsagent.dev\n" in text
    assert "StrictHostKeyChecking yes" in text
    assert world.token not in text  # the token comes from the environment or session file
    assert SSH is not None
    code, out, err = await world.run(SSH, "-F", str(config), "wsagent.dev", "echo via-config")
    assert (code, out) == (0, b"via-config\n"), err


async def test_ssh_connections_count_as_ssh_in_stats(
    make_control_plane: Any, start_agent: Any, tmp_path: Path
) -> None:
    cp = await make_control_plane(stats_interval=0.5)
    world = await make_ssh_world(cp, start_agent, tmp_path)
    code, out, err = await world.ssh("-T", "dev", stdin=b"echo from-a-pipe-shell\n")
    assert (code, out) == (0, b"from-a-pipe-shell\n"), err  # a shell without a PTY

    async def reported() -> Any:
        rows = await cp.store.list_stats(world.agent_id)
        return [r for r in rows if r.conns_by_proto.get("ssh")]

    rows = await poll_until(reported, timeout=20)
    assert sum(r.rx_bytes for r in rows) > 0 and sum(r.tx_bytes for r in rows) > 0


def _foreground_sleep() -> bool:
    """A `sleep 67` runs as its terminal's foreground process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() != b"sleep\x0067\x00":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pgrp, tpgid = int(fields[2]), int(fields[5])
        if pgrp == tpgid:
            return True
    return False
