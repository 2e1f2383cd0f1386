"""``wsagent demo``: control plane and a real agent together on loopback.

Starts the server on a temporary data directory, creates a demo user, workspace and
agent, starts a real ``wsagent agent`` process against it, and prints how to use it.
Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from controlplane.admin import agent_spec, create_user, create_workspace
from controlplane.cliargs import OneLineParser, configure_logging, parse_address
from controlplane.config import ServerConfig

MOTD = (
    "Welcome to the wsagent demo workspace.\n"
    "This shell outlives its window: close the window, then run the same command with\n"
    "--reconnect last (or the --reconnect command printed above) to get it back,\n"
    "scrollback included.\n"
)

DESCRIPTION = (
    "Start the control plane and a real agent on loopback, on a temporary data directory,"
    " with a demo user, workspace and agent, and print how to use them. Ctrl-C stops"
    " everything."
)


def _wsagent_command() -> list[str]:
    # Prefer the console script installed beside this interpreter (a virtualenv's bin/).
    beside = Path(sys.executable).parent / "wsagent"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    exe = shutil.which("wsagent")
    return [exe] if exe else [sys.executable, "-m", "wsagent"]


async def _demo(args: argparse.Namespace) -> int:
    from controlplane.server import start_server
    from controlplane.status import agent_status
    from wscommon import logs

    data_dir = Path(tempfile.mkdtemp(prefix="wsagent-demo-"))
    if not os.environ.get("WSAGENT_DEMO_VERBOSE"):
        # Keep the terminal for the instructions; the server's log goes to a file.
        logs.configure(log_file=data_dir / "server.log", stream=open(os.devnull, "w"))  # noqa: SIM115, ASYNC230
    workdir = data_dir / "workspace"
    workdir.mkdir()
    motd = data_dir / "motd"
    motd.write_text(MOTD)
    host, port = args.address
    config = ServerConfig(
        data_dir=data_dir / "server", host=host, port=port, stats_report_interval=30.0
    )
    try:
        server = await start_server(config)
    except OSError as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        print(f"wsagent demo: error: {exc}", file=sys.stderr)
        return 1
    agent_proc: asyncio.subprocess.Process | None = None
    try:
        _, user_token = await create_user(server.store, "demo", "demo@example.com")
        spec = agent_spec(
            {
                "name": "main",
                "startup_script": 'echo "startup script ran at $(date)"',
                "startup_script_timeout": 60,
                "shutdown_script": 'echo "shutdown script ran at $(date)"',
                "shutdown_script_timeout": 30,
                "directory": str(workdir),
                "env": {"DEMO": "1"},
                "motd_file": str(motd),
                "metadata": [
                    {
                        "key": "load",
                        "display_name": "Load",
                        "script": "cat /proc/loadavg",
                        "interval": 10,
                        "timeout": 2,
                    },
                ],
            }
        )
        workspace, created = await create_workspace(server.store, "demo", "demo", [spec])
        agent = created[0]
        env = {
            **os.environ,
            "CODER_AGENT_URL": server.url,
            "CODER_AGENT_TOKEN": agent.token,
            "CODER_AGENT_LOG_DIR": str(data_dir / "agent-logs"),
        }
        agent_proc = await asyncio.create_subprocess_exec(
            *_wsagent_command(),
            "agent",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        status = "connecting"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while loop.time() < deadline:
            record = await server.store.get_agent(agent.record.id)
            assert record is not None
            status, _ = agent_status(record, datetime.now(UTC), config.inactive_timeout)
            if status == "connected":
                break
            await asyncio.sleep(0.2)
        # Before the banner: whoever reads "Press Ctrl-C" may send SIGINT at once.
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        wsagent = " ".join(shlex.quote(p) for p in _wsagent_command())
        print(
            f"""
wsagent demo is running.

  control plane   {server.url}
  data directory  {data_dir}
  user            demo
  user token      {user_token}
  workspace       {workspace.name}
  agent           {agent.record.name}  id {agent.record.id}  status {status}
  agent logs      {data_dir / "agent-logs"}
  server log      {data_dir / "server.log"}

Open a terminal in the workspace (in another shell):

  {wsagent} terminal --url {server.url} --token {user_token} --agent {agent.record.id}

The shell outlives its window; add --reconnect last to that command to get it back.

Or SSH in with the system's ssh (its ProxyCommand goes through the control plane):

  {wsagent} ssh --url {server.url} --token {user_token} demo

In a browser: sign in at {server.url}/login with the user token; the dashboard is
{server.url}/ and the browser terminal {server.url}/@demo/demo.main/terminal

Look at the agent through the API:

  curl -s -H 'Coder-Session-Token: {user_token}' \\
      {server.url}/api/v2/workspaceagents/{agent.record.id}

Press Ctrl-C to stop.
""",
            flush=True,
        )
        waiter = asyncio.create_task(agent_proc.wait())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            print(f"the agent exited with code {agent_proc.returncode}; stopping", file=sys.stderr)
            return 1
        stopper.cancel()
        return 0
    finally:
        if agent_proc is not None and agent_proc.returncode is None:
            agent_proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(agent_proc.wait(), 8)
            except TimeoutError:
                agent_proc.kill()
                await agent_proc.wait()
        await server.stop()
        if args.keep:
            print(f"demo stopped; its data is kept in {data_dir}", flush=True)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
            print("demo stopped", flush=True)


def run_demo(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="wsagent demo", description=DESCRIPTION)
    parser.add_argument(
        "--address",
        type=parse_address,
        default=("127.0.0.1", 0),
        help="HOST:PORT (default: a free port)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    if os.environ.get("WSAGENT_DEMO_VERBOSE"):
        configure_logging()
    return asyncio.run(_demo(args))
