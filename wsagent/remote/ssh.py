"""``wsagent ssh`` (interactive, with the system's ssh), ``wsagent ssh --stdio`` (the
ProxyCommand) and ``wsagent config-ssh``.

The SSH connection runs inside a byte stream to the agent's SSH server (target ``ssh``).
Host keys are verified, not switched off: the agent publishes its host key through the
control plane, and both commands write it to a known_hosts file wsagent owns
(``<config dir>/known_hosts``) that the ssh options point at, with strict checking on.
The token reaches the ProxyCommand through ``CODER_SESSION_TOKEN`` in its environment (or
the session file), never its command line.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Final

from wsagent.remote.api import AgentRef, Api
from wsagent.remote.session import CliError, Credentials, config_dir
from wsagent.remote.sshconfig import (
    HOST_PREFIX,
    HostEntry,
    known_hosts_line,
    proxy_command,
    render_block,
    replace_block,
    upsert_known_host,
)
from wsagent.remote.stream import CHUNK, open_stream, splice

KNOWN_HOSTS: Final = "known_hosts"


def launcher() -> list[str]:
    """How ssh starts us again: this interpreter with ``-m wsagent``, which works for any
    installation (venv, system package, editable) without relying on PATH."""
    return [sys.executable, "-m", "wsagent"]


async def stdio(credentials: Credentials, spec: str) -> int:
    """Pipe stdin/stdout to the agent's SSH server. Exit 1 with one line if it breaks."""
    api = Api(credentials)
    try:
        agent = await api.find_agent(spec)
    finally:
        await api.aclose()
    ws = await open_stream(credentials, agent.id, "ssh")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    stdin = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, stdout)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        broke = await splice(ws, reader, writer)
    finally:
        await ws.close()
        writer.close()
    if broke:
        raise CliError(broke)
    return 0


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


async def interactive(credentials: Credentials, spec: str, command: list[str]) -> int:
    """Replace this process with the system's ssh, proxied through ``ssh --stdio``."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise CliError("no ssh client found on PATH; install OpenSSH")
    api = Api(credentials)
    try:
        agent = await api.find_agent(spec)
        key = await api.host_key(agent.id)
    finally:
        await api.aclose()
    if not key:
        raise CliError(_no_key(agent))
    alias = HOST_PREFIX + agent.host_name
    known = config_dir() / KNOWN_HOSTS
    _write_private(known, upsert_known_host(_read(known), alias, key))
    if command and command[0] == "--":
        command = command[1:]
    argv = [
        ssh,
        "-o",
        f"ProxyCommand={proxy_command(launcher(), credentials.url, spec)}",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        alias,
        *command,
    ]
    env = {**os.environ, "CODER_URL": credentials.url, "CODER_SESSION_TOKEN": credentials.token}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(ssh, argv, env)


def _no_key(agent: AgentRef) -> str:
    state = f"it is {agent.status}" if agent.status != "connected" else "is it up to date?"
    return f"agent {agent.host_name} has not published an SSH host key ({state})"


async def config_ssh(credentials: Credentials, path: Path) -> int:
    api = Api(credentials)
    try:
        agents = await api.agents()
        keys = {a.id: await api.host_key(a.id) for a in agents}
    finally:
        await api.aclose()
    entries: list[HostEntry] = []
    known_lines: list[str] = []
    for agent in sorted(agents, key=lambda a: a.host_name):
        alias = HOST_PREFIX + agent.host_name
        entries.append(HostEntry(alias, agent.host_name))
        if keys[agent.id]:
            known_lines.append(known_hosts_line(alias, keys[agent.id]))
        else:
            print(f"wsagent config-ssh: warning: {_no_key(agent)}", file=sys.stderr)
    known = config_dir() / KNOWN_HOSTS
    _write_private(known, "".join(f"{line}\n" for line in known_lines))
    block = render_block(entries, launcher(), credentials.url, str(known))
    old = _read(path)
    try:
        new = replace_block(old, block)
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from None
    if new != old:
        _write_keeping_mode(path, new)
    hosts = ", ".join(e.alias for e in entries) or "none"
    print(f"Updated {path}: hosts {hosts}", file=sys.stderr)
    return 0


def _write_keeping_mode(path: Path, text: str) -> None:
    """Atomically, with the file's mode (0600 for a new one; its directory 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
