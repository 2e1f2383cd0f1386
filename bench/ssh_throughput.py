"""SSH and port forwarding through the control plane, beside direct loopback baselines.

    .venv/bin/python bench/ssh_throughput.py [--mib 256]

One run, three processes as deployed (``wsagent server``, ``wsagent agent``, the clients):

* **scp**: OpenSSH's ``scp`` of a ``--mib`` MiB file of random bytes into the workspace,
  through ``wsagent ssh --stdio`` (the control plane's byte stream to the agent's SSH
  server), beside ``scp`` of the same file to a throw-away OpenSSH ``sshd`` on 127.0.0.1
  (needs root and openssh-server, as tests/workspace_start does).
* **port-forward**: the same client code sends ``--mib`` MiB to a sink server on the
  workspace's loopback and waits for its byte count, once through ``wsagent port-forward``
  and once connected to the sink directly.
* **agent memory**: VmRSS of the idle agent (and whether asyncssh/cryptography are
  loaded), then again after the first SSH session ended.

MB/s are 10^6 bytes per second. Every transfer is checked (size, or SHA-256 for scp).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pty_stack import REPO, Stack, running_stack

sys.path.insert(0, str(REPO))

from tests.e2e.workspace_start.sshd import keygen, run_sshd, sshd_unavailable

CHUNK = 256 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def loads_crypto(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "cryptography" in maps or "asyncssh" in maps


def write_random(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(mib):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


async def published_key(stack: Stack) -> str:
    headers = {"Coder-Session-Token": stack.user_token}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers) as client:
        for _ in range(600):
            r = await client.get(f"/api/v2/workspaceagents/{stack.agent_id}/ssh-host-key")
            if r.status_code == 200:
                return str(r.json()["public_key"])
            await asyncio.sleep(0.05)
    raise RuntimeError("the agent never published its host key")


async def run(argv: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-500:]}")
    return elapsed


async def sink_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(CHUNK):
            total += len(data)
        writer.write(total.to_bytes(8, "big"))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def send_all(port: int, total: int) -> float:
    """The client code of both port-forward runs: send, half-close, read the count."""
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    while sent < total:
        writer.write(block)
        await writer.drain()
        sent += len(block)
    writer.write_eof()
    reply = await reader.readexactly(8)
    elapsed = time.perf_counter() - started
    writer.close()
    if int.from_bytes(reply, "big") != sent:
        raise RuntimeError(f"the sink counted {int.from_bytes(reply, 'big')}, sent {sent}")
    return elapsed


def mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:7.1f} MB/s  ({seconds:6.2f} s)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, all threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(pids: dict[str, int], bench: bool = True) -> dict[str, float]:
    spent = {name: cpu_seconds(pid) for name, pid in pids.items()}
    return spent | {"bench": time.process_time()} if bench else spent


def cpu_line(before: dict[str, float], after: dict[str, float], nbytes: int) -> str:
    mb = nbytes / 1e6
    parts = [f"{name} {(after[name] - before[name]) * 1000 / mb:.2f} ms" for name in before]
    return "  CPU per MB: " + ", ".join(parts)


async def main(mib: int, only: str) -> None:
    total = mib << 20
    via_cp = direct = 0.0
    why = ""
    async with running_stack() as stack:
        key = await published_key(stack)
        pid = stack.agent.pid
        idle_rss, idle_crypto = rss_kib(pid), loads_crypto(pid)
        with tempfile.TemporaryDirectory(prefix="wsagent-sshbench-") as tmp_name:
            tmp = Path(tmp_name)
            src = tmp / "payload.bin"
            digest = write_random(src, mib)
            known = tmp / "known_hosts"
            known.write_text(f"ws {key}\n")
            proxy = shlex.join([sys.executable, "-m", "wsagent", "ssh", "--stdio", "ws"])
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CODER_")},
                "CODER_URL": stack.url,
                "CODER_SESSION_TOKEN": stack.user_token,
                "WSAGENT_CONFIG_DIR": str(tmp / "cfg"),
            }
            options = [
                "-F", "/dev/null", "-o", f"ProxyCommand={proxy}",
                "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes",
            ]  # fmt: skip
            # One short SSH session first: what the first connection costs the agent.
            if only != "port-forward":
                await run(["ssh", *options, "ws", "true"], env)
            after_rss, after_crypto = rss_kib(pid), loads_crypto(pid)
            dest = tmp / "through.bin"
            pids = {"agent": pid, "server": stack.server.pid}
            scp_cpu = cpu_now(pids, bench=False)
            if only != "port-forward":
                via_cp = await run(["scp", "-q", *options, str(src), f"ws:{dest}"], env)
                if hashlib.sha256(dest.read_bytes()).hexdigest() != digest:
                    raise RuntimeError("scp through the control plane corrupted the file")
                dest.unlink()
            scp_cpu_after = cpu_now(pids, bench=False)
            after_scp_rss = rss_kib(pid)

            why = sshd_unavailable() if only != "port-forward" else "--only port-forward"
            if not why:
                async with run_sshd(tmp / "sshd") as sshd:
                    sshd.authorize(keygen(tmp / "id_ed25519"))
                    config = sshd.client_config(tmp / "id_ed25519")
                    target = f"{sshd.user}@127.0.0.1:{tmp / 'direct.bin'}"
                    argv = ["scp", "-q", "-F", str(config), "-P", str(sshd.port), str(src), target]
                    direct = await run(argv)
                if hashlib.sha256((tmp / "direct.bin").read_bytes()).hexdigest() != digest:
                    raise RuntimeError("direct scp corrupted the file")

            server = await sink_server()
            sink_port = server.sockets[0].getsockname()[1]
            forwarder = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wsagent", "port-forward", "ws",
                "--tcp", f"0:{sink_port}",
                env=env, stderr=asyncio.subprocess.PIPE, cwd=str(REPO),
            )  # fmt: skip
            try:
                assert forwarder.stderr is not None
                line = (await asyncio.wait_for(forwarder.stderr.readline(), 20)).decode()
                local = int(line.split("127.0.0.1:")[1].split()[0])
                pids["forwarder"] = forwarder.pid
                pf_cpu = cpu_now(pids)
                forwarded = await send_all(local, total)
                pf_cpu_after = cpu_now(pids)
                plain = await send_all(sink_port, total)
            finally:
                forwarder.terminate()
                await forwarder.wait()
                server.close()

    print(f"payload: {mib} MiB of random bytes")
    if via_cp:
        print(f"scp through the control plane   {mbps(total, via_cp)}")
        # Only the plane's two processes: scp, ssh and the ProxyCommand are the bench's
        # children and grandchildren, which /proc counts only once they have been reaped.
        print(cpu_line(scp_cpu, scp_cpu_after, total))
    if direct:
        print(f"scp to a local sshd (baseline)  {mbps(total, direct)}")
        print(f"  ratio: {direct / via_cp:.0%} of direct")
    else:
        print(f"scp to a local sshd (baseline)  skipped: {why}")
    print(f"port-forward through the plane  {mbps(total, forwarded)}")
    print(cpu_line(pf_cpu, pf_cpu_after, total) + " (bench: client and sink)")
    print(f"direct loopback (baseline)      {mbps(total, plain)}")
    print(f"  ratio: {plain / forwarded:.0%} of direct")
    print(
        f"agent RSS idle: {idle_rss / 1024:.1f} MiB (asyncssh/cryptography loaded: {idle_crypto})"
    )
    print(
        f"agent RSS after one SSH session (ssh ws true): {after_rss / 1024:.1f} MiB "
        f"(+{(after_rss - idle_rss) / 1024:.1f} MiB; loaded: {after_crypto})"
    )
    print(
        f"agent RSS after the {mib} MiB scp: {after_scp_rss / 1024:.1f} MiB "
        f"(+{(after_scp_rss - idle_rss) / 1024:.1f} MiB over idle)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--only", choices=("all", "port-forward"), default="all")
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.only))
