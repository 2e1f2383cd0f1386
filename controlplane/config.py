"""Control-plane settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from agent.sdk.tailnet import DERPMap, DERPNode, DERPRegion
from controlplane.identity.config import IdentityConfig

DEFAULT_TROUBLESHOOTING_URL: Final = (
    "https://coder.com/docs/coder-oss/latest/templates#troubleshooting-templates"
)
EMBEDDED_REGION_ID: Final = 999


@dataclass
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 3000
    access_url: str = ""  # how agents and users reach us; derived from host:port if empty
    wildcard_access_url: str = ""  # e.g. "*.apps.example.com" for vscode_port_proxy_uri
    tls_cert: Path | None = None
    tls_key: Path | None = None
    stats_report_interval: float = 600.0  # seconds; Coder's deployment default (10 min)
    # Reports closer together than this are merged into the agent's newest row; None means
    # 90% of the report interval (room for an agent's timer jitter), 0 stores every report.
    stats_min_spacing: float | None = None
    agent_heartbeat_interval: float = 3.0  # refresh last_connected_at this often
    max_body_bytes: int = 1 << 20
    # Connection limits (controlplane/connguard.py): a request head must be complete this
    # long after its first byte, an idle keep-alive connection is closed after idle_timeout,
    # a body must arrive within body_timeout, and at most max_unauthenticated connections
    # may be open without having presented a valid token (capped by the fd limit too).
    head_timeout: float = 10.0
    idle_timeout: float = 30.0
    body_timeout: float = 30.0
    max_unauthenticated: int = 1024
    troubleshooting_url: str = DEFAULT_TROUBLESHOOTING_URL
    identity_token_ttl: float = 24 * 3600.0
    pty_dial_timeout: float = 10.0
    durability: str = "normal"
    session_ttl: float = 7 * 24 * 3600.0  # a browser sign-in lasts this long
    # PostgreSQL instead of SQLite in data_dir (several replicas share one database).
    database_url: str = ""
    database_pool_size: int = 10
    # This replica's stable name and the URL its peers (and agents' PTY dial-backs) reach
    # it at, not the load balancer's; derived from host and port when empty.
    replica_id: str = ""
    replica_url: str = ""
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    # Prometheus endpoint (host, port); None is off. The CLI turns it on at 127.0.0.1:2114.
    metrics_address: tuple[str, int] | None = None

    @property
    def stats_spacing(self) -> float:
        if self.stats_min_spacing is not None:
            return self.stats_min_spacing
        return 0.9 * self.stats_report_interval

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def resolved_access_url(self, bound_port: int | None = None) -> str:
        if self.access_url:
            return self.access_url.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"{self.scheme}://{host}:{bound_port or self.port}"

    def resolved_replica_url(self, bound_port: int | None = None) -> str:
        if self.replica_url:
            return self.replica_url.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]"):
            import socket

            host = socket.gethostname()
        return f"{self.scheme}://{host}:{bound_port or self.port}"

    def resolved_replica_id(self, bound_port: int | None = None) -> str:
        if self.replica_id:
            return self.replica_id
        import socket

        return f"{socket.gethostname()}:{bound_port or self.port}"

    @property
    def inactive_timeout(self) -> float:
        """An agent whose last heartbeat is older than this counts as disconnected."""
        return 2 * self.agent_heartbeat_interval


def derp_map_for(access_url: str) -> DERPMap:
    """The embedded relay region, reached through the access URL (docs/protocol.md, "Metadata")."""
    parts = urlsplit(access_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    node = DERPNode(
        name=f"{EMBEDDED_REGION_ID}a",
        region_id=EMBEDDED_REGION_ID,
        host_name=parts.hostname or "localhost",
        derp_port=port,
        force_http=parts.scheme == "http",
    )
    region = DERPRegion(
        region_id=EMBEDDED_REGION_ID,
        region_code="coder",
        region_name="Coder Embedded Relay",
        embedded_relay=True,
        nodes=(node,),
    )
    return DERPMap(regions={EMBEDDED_REGION_ID: region})
