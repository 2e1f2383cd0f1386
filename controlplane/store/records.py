"""Plain records the store hands out. Handlers never see SQL rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agent.sdk.agentmetadata import MetadataDescription
from agent.sdk.models import MAX_STATS_PROTOCOLS, Stats


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    name: str
    email: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WorkspaceRecord:
    id: str
    owner_id: str
    name: str
    created_at: datetime
    latest_build: int
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AppSpec:
    slug: str
    display_name: str = ""
    url: str = ""
    command: str = ""
    icon: str = ""
    external: bool = False
    subdomain: bool = False
    sharing_level: str = "owner"
    healthcheck_url: str = ""
    healthcheck_interval: int = 0
    healthcheck_threshold: int = 0


@dataclass(frozen=True, slots=True)
class AppRecord:
    id: str
    agent_id: str
    spec: AppSpec
    health: str


AUTH_KINDS = frozenset(
    {"token", "aws-instance-identity", "google-instance-identity", "azure-instance-identity"}
)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What an administrator declares for one agent of a workspace build."""

    name: str
    auth: str = "token"
    instance_id: str = ""
    startup_script: str = ""
    # Seconds; fractions are allowed (the wire carries nanoseconds), 0 means none.
    startup_script_timeout_seconds: float = 0
    shutdown_script: str = ""
    # Seconds, as above; 0 leaves it to the agent (which then allows 300 s).
    shutdown_script_timeout_seconds: float = 0
    # Commands the agent runs on an interval, their results posted per key.
    metadata: tuple[MetadataDescription, ...] = ()
    directory: str = ""
    environment_variables: dict[str, str] = field(default_factory=dict)
    motd_file: str = ""
    apps: tuple[AppSpec, ...] = ()
    connection_timeout_seconds: int = 120
    troubleshooting_url: str = ""
    login_before_ready: bool = True
    architecture: str = "amd64"
    operating_system: str = "linux"


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    workspace_id: str
    build_number: int
    resource_id: str
    created_at: datetime
    updated_at: datetime
    spec: AgentSpec
    lifecycle_state: str = "created"
    version: str = ""
    expanded_directory: str = ""
    first_connected_at: datetime | None = None
    last_connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    startup_logs_length: int = 0
    startup_logs_overflowed: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def auth_kind(self) -> str:
        return self.spec.auth


@dataclass(frozen=True, slots=True)
class CreatedAgent:
    record: AgentRecord
    token: str  # plaintext, shown once; "" for instance-identity agents


@dataclass(frozen=True, slots=True)
class GitAuthProvider:
    id: str
    regex: str
    type: str = ""


@dataclass(frozen=True, slots=True)
class GitAuthLink:
    provider_id: str
    user_id: str
    username: str
    password: str
    updated_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class GitSSHKeyRecord:
    user_id: str
    public_key: str
    private_key: str


@dataclass(frozen=True, slots=True)
class StatsRecord:
    id: int
    agent_id: str
    workspace_id: str
    user_id: str
    created_at: datetime
    conns_by_proto: dict[str, int]
    num_comms: int
    rx_packets: int
    rx_bytes: int
    tx_packets: int
    tx_bytes: int


_INT64_MAX = 2**63 - 1


def merge_stats(stored: Stats, extra: Stats) -> Stats:
    """One report standing for two windows: counters add up (saturating at int64, the
    column's range), and a protocol beyond the per-report cap is dropped, so a merged
    row is no larger than one report can be."""

    def add(a: int, b: int) -> int:
        return max(-_INT64_MAX - 1, min(_INT64_MAX, a + b))

    conns = dict(stored.conns_by_proto)
    for name, count in extra.conns_by_proto.items():
        if name in conns:
            conns[name] = add(conns[name], count)
        elif len(conns) < MAX_STATS_PROTOCOLS:
            conns[name] = count
    return Stats(
        conns_by_proto=conns,
        num_comms=add(stored.num_comms, extra.num_comms),
        rx_packets=add(stored.rx_packets, extra.rx_packets),
        rx_bytes=add(stored.rx_bytes, extra.rx_bytes),
        tx_packets=add(stored.tx_packets, extra.tx_packets),
        tx_bytes=add(stored.tx_bytes, extra.tx_bytes),
    )


@dataclass(frozen=True, slots=True)
class StartupLogRecord:
    id: int
    agent_id: str
    created_at: datetime
    output: str
    level: str


@dataclass(frozen=True, slots=True)
class NewStartupLog:
    created_at: datetime
    output: str
    level: str = "info"


@dataclass(frozen=True, slots=True)
class AppendLogsResult:
    """What an append did: ``stored`` lines kept (ids from ``first_id``), ``skipped`` lines
    already stored by an earlier try of the same batch, and whether the cap was reached
    (``overflowed``; ``newly`` when by this append)."""

    stored: int
    skipped: int
    first_id: int | None
    overflowed: bool
    newly: bool


@dataclass(frozen=True, slots=True)
class MetadataRecord:
    """The latest result of one agent metadata key."""

    agent_id: str
    key: str
    value: str
    error: str
    collected_at: datetime
