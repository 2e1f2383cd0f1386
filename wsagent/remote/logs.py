"""``wsagent logs <workspace>[.<agent>] [--follow]``: print a workspace agent's startup logs.

The URL and token come from ``--url``/``--token``, ``CODER_URL``/``CODER_SESSION_TOKEN`` or
the session file ``wsagent login`` saved. The stored lines are read page by page
(``GET /workspaceagents/{id}/startup-logs?after=<last id>``); with ``--follow`` the follow
WebSocket then prints new lines as they arrive, until the server closes it or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from wsagent.remote.api import Api
from wsagent.remote.session import CliError, Credentials, resolve

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
OPEN_TIMEOUT: Final = 15.0
MAX_MESSAGE: Final = 16 << 20


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsagent logs", description="Print a workspace agent's startup logs."
    )
    p.add_argument("workspace", help="<workspace>[.<agent>]")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--url", help="control plane URL (env CODER_URL, else the session file)")
    p.add_argument(
        "--token", help="user session token (env CODER_SESSION_TOKEN, else the session file)"
    )
    return p


def print_lines(logs: list[dict[str, Any]]) -> int:
    """Print each line's output; returns the last id (0 if none)."""
    out = sys.stdout
    for entry in logs:
        out.write(f"{entry.get('output', '')}\n")
    out.flush()
    return int(logs[-1]["id"]) if logs else 0


def follow_url(base: str, agent_id: str, after: int) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + f"/api/v2/workspaceagents/{agent_id}/startup-logs"
    return urlunsplit((scheme, parts.netloc, path, f"follow&after={after}", ""))


async def print_stored(api: Api, agent_id: str) -> tuple[int, bool]:
    """Print every stored line; returns the last id and whether the logs overflowed."""
    after = 0
    while True:
        page = await api.get(
            f"/api/v2/workspaceagents/{agent_id}/startup-logs?after={after}", "read the logs"
        )
        if not isinstance(page, list) or not page:
            break
        after = print_lines(page)
    agent = await api.get(f"/api/v2/workspaceagents/{agent_id}", "read the agent")
    return after, isinstance(agent, dict) and bool(agent.get("startup_logs_overflowed"))


async def follow(credentials: Credentials, agent_id: str, after: int) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    url = follow_url(credentials.url, agent_id, after)
    try:
        ws = await connect(
            url,
            additional_headers={"Coder-Session-Token": credentials.token},
            compression=None,
            open_timeout=OPEN_TIMEOUT,
            max_size=MAX_MESSAGE,
            user_agent_header="wsagent logs",
        )
    except InvalidStatus as exc:
        raise CliError(f"cannot follow the logs: status {exc.response.status_code}") from exc
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        raise CliError(f"cannot follow the logs: {exc}") from exc
    try:
        async for message in ws:
            print_lines(json.loads(message))
    except ConnectionClosed:
        pass
    finally:
        await ws.close()


async def run(args: argparse.Namespace) -> int:
    credentials = resolve(args.url, args.token)
    api = Api(credentials)
    try:
        agent = await api.find_agent(args.workspace)
        last, overflowed = await print_stored(api, agent.id)
    finally:
        await api.aclose()
    if overflowed:
        print("wsagent logs: startup logs exceeded the max size of 1 MiB", file=sys.stderr)
    if args.follow:
        await follow(credentials, agent.id, last)
    return 0


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    try:
        return asyncio.run(run(args))
    except CliError as exc:
        print(f"wsagent logs: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
