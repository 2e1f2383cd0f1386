"""Argument parsing and dispatch for the user commands (``login``, ``port-forward``,
``ssh``, ``config-ssh``). Every failure is one line on stderr and exit status 1; a usage
error is exit status 2."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from wsagent.remote.session import CliError, Credentials, check_url, config_dir, resolve

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="control plane URL (env CODER_URL, else the session file)")
    p.add_argument(
        "--token", help="user session token (env CODER_SESSION_TOKEN, else the session file)"
    )


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"wsagent {command}")
    if command == "login":
        p.description = "Check a session token and save it (mode 0600) for the other commands."
        p.add_argument("url", help="control plane URL, e.g. https://coder.example.com")
        p.add_argument("--token", help="user session token (default: read from the terminal)")
    elif command == "port-forward":
        p.description = "Forward local TCP ports to ports on a workspace's loopback."
        p.add_argument("workspace", help="<workspace>[.<agent>]")
        p.add_argument(
            "--tcp",
            action="append",
            required=True,
            metavar="[BIND:]LOCAL:REMOTE",
            help="forward LOCAL (on BIND, default 127.0.0.1) to REMOTE; repeatable",
        )
        _common(p)
    elif command == "ssh":
        p.description = "SSH into a workspace with the system's ssh, through the control plane."
        p.add_argument("workspace", help="<workspace>[.<agent>]")
        p.add_argument(
            "--stdio", action="store_true", help="be the ProxyCommand: pipe stdin/stdout"
        )
        p.add_argument("command", nargs=argparse.REMAINDER, help="command to run (default: shell)")
        _common(p)
    elif command == "config-ssh":
        p.description = "Add Host entries for your workspaces to ~/.ssh/config (a managed block)."
        p.add_argument(
            "--ssh-config-file",
            default="~/.ssh/config",
            type=lambda text: Path(text).expanduser(),
            help="default ~/.ssh/config",
        )
        _common(p)
    return p


async def _login(args: argparse.Namespace) -> int:
    from wsagent.remote.api import Api
    from wsagent.remote.session import SESSION_FILE, save_session

    url = check_url(args.url)
    token = args.token
    if not token:
        if sys.stdin.isatty():
            token = await asyncio.to_thread(getpass.getpass, "Session token: ")
        else:
            token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise CliError("no token given")
    credentials = Credentials(url, token)
    api = Api(credentials)
    try:
        name = await api.whoami()
    finally:
        await api.aclose()
    path = config_dir() / SESSION_FILE
    save_session(path, credentials)
    print(f"Logged in to {url} as {name}; session saved in {path}", file=sys.stderr)
    return 0


async def _port_forward(args: argparse.Namespace) -> int:
    from wsagent.remote import portforward
    from wsagent.remote.api import Api

    forwards = [portforward.Forward.parse(spec) for spec in args.tcp]
    credentials = resolve(args.url, args.token)
    api = Api(credentials)
    try:
        agent = await api.find_agent(args.workspace)
    finally:
        await api.aclose()
    return await portforward.run(credentials, agent, forwards)


async def _ssh(args: argparse.Namespace) -> int:
    from wsagent.remote import ssh

    credentials = resolve(args.url, args.token)
    if args.stdio:
        return await ssh.stdio(credentials, args.workspace)
    return await ssh.interactive(credentials, args.workspace, args.command)


async def _config_ssh(args: argparse.Namespace) -> int:
    from wsagent.remote import ssh

    credentials = resolve(args.url, args.token)
    return await ssh.config_ssh(credentials, args.ssh_config_file)


RUNNERS: Final[dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]]] = {
    "login": _login,
    "port-forward": _port_forward,
    "ssh": _ssh,
    "config-ssh": _config_ssh,
}


def main(command: str, argv: Sequence[str]) -> int:
    args = _parser(command).parse_args(list(argv))
    try:
        return asyncio.run(RUNNERS[command](args))
    except CliError as exc:
        print(f"wsagent {command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
