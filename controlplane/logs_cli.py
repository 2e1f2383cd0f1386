"""``wsagent logs``: print a workspace agent's startup logs, optionally following them.

    wsagent logs [--url URL] [--token USER_TOKEN] <workspace>[.<agent>] [--follow]

``--url`` and ``--token`` default to ``CODER_URL`` and ``CODER_SESSION_TOKEN``. Without
``--follow`` the stored lines are printed page by page (``after=<last id>``); with it, the
follow WebSocket keeps printing new lines until the server closes it or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
TIMEOUT: Final = 15.0


class LogsError(Exception):
    """A lookup failed; the message is what the user sees."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsagent logs", description="Print a workspace agent's startup logs."
    )
    p.add_argument("target", metavar="WORKSPACE[.AGENT]")
    p.add_argument("--url", default=os.environ.get("CODER_URL", ""), help="control plane URL")
    p.add_argument(
        "--token", default=os.environ.get("CODER_SESSION_TOKEN", ""), help="user session token"
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    return p


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = str(body.get("message", "")) if isinstance(body, dict) else ""
    except ValueError:
        message = response.text[:200]
    return f"{response.status_code}: {message}"


def resolve_agent(workspaces: list[dict[str, Any]], target: str) -> str:
    """The agent ID for ``workspace[.agent]``; one agent may be left unnamed."""
    name, _, agent_name = target.partition(".")
    found = [w for w in workspaces if w.get("name") == name]
    if not found:
        raise LogsError(f"workspace {name!r} not found")
    agents = found[0].get("agents") or []
    if agent_name:
        agents = [a for a in agents if a.get("name") == agent_name]
        if not agents:
            raise LogsError(f"workspace {name!r} has no agent {agent_name!r}")
    if len(agents) != 1:
        names = ", ".join(sorted(str(a.get("name")) for a in agents)) or "none"
        raise LogsError(f"workspace {name!r} has several agents ({names}); name one: {name}.AGENT")
    return str(agents[0]["id"])


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


def fetch(client: httpx.Client, agent_id: str) -> tuple[int, bool]:
    """Print every stored line; returns the last id and whether the logs overflowed."""
    after = 0
    while True:
        response = client.get(
            f"/api/v2/workspaceagents/{agent_id}/startup-logs", params={"after": after}
        )
        if response.status_code != 200:
            raise LogsError(_error(response))
        page = response.json()
        if not page:
            break
        after = print_lines(page)
    agent = client.get(f"/api/v2/workspaceagents/{agent_id}")
    overflowed = agent.status_code == 200 and bool(agent.json().get("startup_logs_overflowed"))
    return after, overflowed


async def follow(url: str, token: str) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    try:
        ws = await connect(
            url,
            additional_headers={"Coder-Session-Token": token},
            compression=None,
            open_timeout=TIMEOUT,
            max_size=16 << 20,
            user_agent_header="wsagent logs",
        )
    except InvalidStatus as exc:
        body = (exc.response.body or b"").decode("utf-8", "replace").strip()
        print(f"wsagent logs: {exc.response.status_code}: {body}", file=sys.stderr)
        return EXIT_FAILURE
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        print(f"wsagent logs: cannot follow: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        async for message in ws:
            print_lines(json.loads(message))
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
    return 0


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if not args.url or not args.token:
        print(
            "wsagent logs: --url and --token (or CODER_URL, CODER_SESSION_TOKEN) are required",
            file=sys.stderr,
        )
        return EXIT_USAGE
    headers = {"Coder-Session-Token": args.token, "User-Agent": "wsagent logs"}
    try:
        with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=TIMEOUT) as c:
            response = c.get("/api/v2/workspaces")
            if response.status_code != 200:
                raise LogsError(_error(response))
            agent_id = resolve_agent(response.json().get("workspaces", []), args.target)
            last, overflowed = fetch(c, agent_id)
    except LogsError as exc:
        print(f"wsagent logs: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except httpx.HTTPError as exc:
        print(f"wsagent logs: cannot reach {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if overflowed:
        print("wsagent logs: startup logs exceeded the max size of 1 MiB", file=sys.stderr)
    if not args.follow:
        return 0
    try:
        return asyncio.run(follow(follow_url(args.url, agent_id, last), args.token))
    except KeyboardInterrupt:
        return 130
