"""Where a workspace's apps, ports and terminal live in the browser (Coder's URL forms).

Path-based: ``/@<owner>/<workspace>.<agent>/apps/<slug>/``, ``.../ports/<port>/`` and
``.../terminal``. With a wildcard access URL (``*.apps.example.com``), subdomain apps
are ``<slug>--<agent>--<workspace>--<owner>.apps.example.com`` and ports
``<port>--<agent>--<workspace>--<owner>.apps.example.com`` (``vscode_port_proxy_uri``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

from controlplane.config import ServerConfig
from controlplane.store.records import AppSpec

# Names are Coder's DNS-label shape (letters, digits, single hyphens); app slugs too.
_LABEL: Final = r"[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*"
SUBDOMAIN: Final = re.compile(
    rf"(?P<target>{_LABEL}?)--(?P<agent>{_LABEL})--(?P<workspace>{_LABEL})--(?P<owner>{_LABEL})"
)


def agent_base(owner: str, workspace: str, agent: str) -> str:
    return f"/@{quote(owner)}/{quote(workspace)}.{quote(agent)}"


def terminal_path(owner: str, workspace: str, agent: str) -> str:
    return agent_base(owner, workspace, agent) + "/terminal"


def wildcard_host(config: ServerConfig, label: str) -> str:
    """``<label>.<wildcard suffix>[:port]``; "" without a wildcard access URL."""
    wildcard = config.wildcard_access_url.strip()
    if not wildcard.startswith("*."):
        return ""
    suffix = wildcard[2:]
    if ":" not in suffix:
        access = urlsplit(config.resolved_access_url())
        default = 443 if access.scheme == "https" else 80
        if access.port is not None and access.port != default:
            suffix = f"{suffix}:{access.port}"
    return f"{label}.{suffix}"


def _scheme(config: ServerConfig) -> str:
    return urlsplit(config.resolved_access_url()).scheme or "http"


def app_href(config: ServerConfig, owner: str, workspace: str, agent: str, app: AppSpec) -> str:
    if app.external:
        return app.url
    if not app.url:  # a command app: a terminal running its command
        return terminal_path(owner, workspace, agent) + "?command=" + quote(app.command)
    if app.subdomain:
        host = wildcard_host(config, f"{app.slug}--{agent}--{workspace}--{owner}")
        if host:
            return f"{_scheme(config)}://{host}/"
    return agent_base(owner, workspace, agent) + f"/apps/{quote(app.slug)}/"


def port_href(config: ServerConfig, owner: str, workspace: str, agent: str, port: int) -> str:
    host = wildcard_host(config, f"{port}--{agent}--{workspace}--{owner}")
    if host:
        return f"{_scheme(config)}://{host}/"
    return agent_base(owner, workspace, agent) + f"/ports/{port}/"


@dataclass(frozen=True, slots=True)
class SubdomainTarget:
    """What a wildcard host names: an app slug or a port, of an owner's agent."""

    owner: str
    workspace: str
    agent: str
    slug: str = ""
    port: int = 0


def parse_subdomain(config: ServerConfig, host: str) -> SubdomainTarget | None:
    """The app or port a request's ``Host`` names under the wildcard; None otherwise."""
    wildcard = config.wildcard_access_url.strip().lower()
    if not wildcard.startswith("*.") or not host:
        return None
    suffix = wildcard[2:].split(":", 1)[0]
    name = host.lower().rsplit(":", 1)[0] if not host.startswith("[") else ""
    if not name.endswith("." + suffix):
        return None
    label = name[: -len(suffix) - 1]
    found = SUBDOMAIN.fullmatch(label)
    if found is None:
        return None
    target = found["target"]
    owner, workspace, agent = found["owner"], found["workspace"], found["agent"]
    if target.isdigit():
        port = int(target)
        if not 1 <= port <= 65535:
            return None
        return SubdomainTarget(owner, workspace, agent, port=port)
    return SubdomainTarget(owner, workspace, agent, slug=target)
