"""The few REST calls the user commands make, with one-line errors.

A workspace is named ``<workspace>[.<agent>]`` among the user's own workspaces; the agent
name may be left out when the workspace has exactly one agent.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Final

import httpx

from wsagent.remote.session import CliError, Credentials

TIMEOUT: Final = 15.0
MAX_BODY: Final = 16 << 20


@dataclass(frozen=True, slots=True)
class AgentRef:
    id: str
    workspace: str
    name: str
    status: str
    # How many agents its workspace has: a host name needs the agent's name only then.
    siblings: int = 1

    @property
    def host_name(self) -> str:
        """The part after ``wsagent.`` in ssh host names and known_hosts."""
        return self.workspace if self.siblings == 1 else f"{self.workspace}.{self.name}"


def server_message(response: httpx.Response) -> str:
    """Coder's error body as one line: ``message (detail)``."""
    try:
        body = response.json()
    except ValueError:
        return f"status {response.status_code}"
    if not isinstance(body, dict):
        return f"status {response.status_code}"
    message = str(body.get("message", "")) or f"status {response.status_code}"
    detail = str(body.get("detail", ""))
    return f"{message} ({detail})" if detail else message


class Api:
    def __init__(self, credentials: Credentials, verify: ssl.SSLContext | bool = True) -> None:
        self.credentials = credentials
        self._client = httpx.AsyncClient(
            base_url=credentials.url,
            headers={"Coder-Session-Token": credentials.token},
            timeout=TIMEOUT,
            verify=verify,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, path: str, what: str) -> Any:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach {self.credentials.url}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code == 401:
            raise CliError(
                f"not authorized by {self.credentials.url}: {server_message(response)}; "
                "run wsagent login"
            )
        if response.status_code != 200:
            raise CliError(f"{what}: {server_message(response)}")
        if len(response.content) > MAX_BODY:
            raise CliError(f"{what}: the answer is too large")
        try:
            return response.json()
        except ValueError:
            raise CliError(f"{what}: the control plane did not answer JSON") from None

    async def whoami(self) -> str:
        body = await self.get("/api/v2/users/me", "who am I")
        return str(body.get("username", "")) if isinstance(body, dict) else ""

    async def agents(self) -> list[AgentRef]:
        """Every agent of the user's workspaces."""
        body = await self.get("/api/v2/workspaces", "list workspaces")
        out: list[AgentRef] = []
        for workspace in body.get("workspaces", []) if isinstance(body, dict) else []:
            agents = workspace.get("agents") or []
            for agent in agents:
                out.append(
                    AgentRef(
                        str(agent["id"]),
                        str(workspace["name"]),
                        str(agent["name"]),
                        str(agent.get("status", "")),
                        len(agents),
                    )
                )
        return out

    async def find_agent(self, spec: str) -> AgentRef:
        """``<workspace>[.<agent>]`` among the user's workspaces."""
        workspace, _, name = spec.partition(".")
        if not workspace:
            raise CliError(f"invalid workspace {spec!r}: expected <workspace>[.<agent>]")
        agents = [a for a in await self.agents() if a.workspace == workspace]
        if not agents:
            raise CliError(f"unknown workspace {workspace!r}")
        if name:
            named = [a for a in agents if a.name == name]
            if not named:
                known = ", ".join(sorted(a.name for a in agents))
                raise CliError(f"workspace {workspace!r} has no agent {name!r} (agents: {known})")
            return named[0]
        if len(agents) > 1:
            known = ", ".join(sorted(a.name for a in agents))
            raise CliError(
                f"workspace {workspace!r} has several agents ({known}); "
                f"name one as {workspace}.<agent>"
            )
        return agents[0]

    async def host_key(self, agent_id: str) -> str:
        """The agent's published SSH host key (an OpenSSH public key line), or ""."""
        path = f"/api/v2/workspaceagents/{agent_id}/ssh-host-key"
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.credentials.url}: {exc}") from exc
        if response.status_code == 404:
            return ""
        if response.status_code != 200:
            raise CliError(f"fetch the SSH host key: {server_message(response)}")
        body = response.json()
        return str(body.get("public_key", "")) if isinstance(body, dict) else ""
