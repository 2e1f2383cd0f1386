"""Models of the user-facing agent endpoints: ``GET /workspaceagents/{id}``,
``/connection`` and ``/listening-ports``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.sdk.agentmetadata import WorkspaceAgentMetadata
from agent.sdk.codec import Obj, format_time
from agent.sdk.errors import DecodeError
from agent.sdk.models import AGENT_STATUSES, LIFECYCLE_STATES, WorkspaceApp, decode_apps
from agent.sdk.tailnet import DERPMap


@dataclass(frozen=True, slots=True)
class DERPRegionLatency:
    latency_ms: float
    preferred: bool

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "preferred": self.preferred}


@dataclass(frozen=True, slots=True)
class WorkspaceAgent:
    """``GET /workspaceagents/{id}`` (codersdk.WorkspaceAgent)."""

    id: str
    created_at: datetime
    updated_at: datetime
    status: str
    lifecycle_state: str
    name: str
    resource_id: str
    architecture: str
    operating_system: str
    version: str
    connection_timeout_seconds: int
    troubleshooting_url: str
    startup_script_timeout_seconds: int
    login_before_ready: bool
    first_connected_at: datetime | None = None
    last_connected_at: datetime | None = None
    disconnected_at: datetime | None = None
    instance_id: str = ""
    environment_variables: dict[str, str] = field(default_factory=dict)
    startup_script: str = ""
    directory: str = ""
    expanded_directory: str = ""
    apps: tuple[WorkspaceApp, ...] = ()
    latency: dict[str, DERPRegionLatency] = field(default_factory=dict)
    startup_logs_length: int = 0
    startup_logs_overflowed: bool = False
    shutdown_script: str = ""
    shutdown_script_timeout_seconds: int = 0
    # wsagent's addition (omitted when the template defines none): the latest metadata.
    metadata: tuple[WorkspaceAgentMetadata, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
        }
        for key, when in (
            ("first_connected_at", self.first_connected_at),
            ("last_connected_at", self.last_connected_at),
            ("disconnected_at", self.disconnected_at),
        ):
            if when is not None:
                out[key] = format_time(when)
        out["status"] = self.status
        out["lifecycle_state"] = self.lifecycle_state
        out["name"] = self.name
        out["resource_id"] = self.resource_id
        if self.instance_id:
            out["instance_id"] = self.instance_id
        out["architecture"] = self.architecture
        out["environment_variables"] = self.environment_variables
        out["operating_system"] = self.operating_system
        if self.startup_script:
            out["startup_script"] = self.startup_script
        out["startup_logs_length"] = self.startup_logs_length
        out["startup_logs_overflowed"] = self.startup_logs_overflowed
        if self.directory:
            out["directory"] = self.directory
        if self.expanded_directory:
            out["expanded_directory"] = self.expanded_directory
        out["version"] = self.version
        out["apps"] = [a.to_json() for a in self.apps]
        if self.latency:
            out["latency"] = {k: v.to_json() for k, v in self.latency.items()}
        out["connection_timeout_seconds"] = self.connection_timeout_seconds
        out["troubleshooting_url"] = self.troubleshooting_url
        out["startup_script_timeout_seconds"] = self.startup_script_timeout_seconds
        out["login_before_ready"] = self.login_before_ready
        if self.shutdown_script:
            out["shutdown_script"] = self.shutdown_script
        out["shutdown_script_timeout_seconds"] = self.shutdown_script_timeout_seconds
        if self.metadata:
            out["metadata"] = [m.to_json() for m in self.metadata]
        return out

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> WorkspaceAgent:
        o = Obj(value, endpoint)
        latency = o.mapping(
            "latency",
            lambda v, p: _latency(Obj(v, endpoint, p)),
        )
        return cls(
            id=o.uuid("id"),
            created_at=o.time("created_at"),
            updated_at=o.time("updated_at"),
            first_connected_at=o.opt_time("first_connected_at"),
            last_connected_at=o.opt_time("last_connected_at"),
            disconnected_at=o.opt_time("disconnected_at"),
            status=o.one_of("status", AGENT_STATUSES),
            lifecycle_state=o.one_of("lifecycle_state", LIFECYCLE_STATES),
            name=o.text("name"),
            resource_id=o.uuid("resource_id"),
            instance_id=o.text("instance_id", ""),
            architecture=o.text("architecture", ""),
            environment_variables=o.text_map("environment_variables"),
            operating_system=o.text("operating_system", ""),
            startup_script=o.text("startup_script", ""),
            startup_logs_length=o.integer("startup_logs_length", 0),
            startup_logs_overflowed=o.flag("startup_logs_overflowed", False),
            shutdown_script=o.text("shutdown_script", ""),
            shutdown_script_timeout_seconds=o.integer("shutdown_script_timeout_seconds", 0),
            metadata=tuple(
                o.array("metadata", lambda v, p: WorkspaceAgentMetadata.from_json(v, endpoint))
            ),
            directory=o.text("directory", ""),
            expanded_directory=o.text("expanded_directory", ""),
            version=o.text("version", ""),
            apps=tuple(decode_apps(o, "apps")),
            latency=latency,
            connection_timeout_seconds=o.integer("connection_timeout_seconds", 0),
            troubleshooting_url=o.text("troubleshooting_url", ""),
            startup_script_timeout_seconds=o.integer("startup_script_timeout_seconds", 0),
            login_before_ready=o.flag("login_before_ready", False),
        )


def _latency(o: Obj) -> DERPRegionLatency:
    return DERPRegionLatency(latency_ms=o.number("latency_ms"), preferred=o.flag("preferred"))


@dataclass(frozen=True, slots=True)
class WorkspaceAgentConnectionInfo:
    derp_map: DERPMap

    def to_json(self) -> dict[str, Any]:
        return {"derp_map": self.derp_map.to_json()}

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> WorkspaceAgentConnectionInfo:
        o = Obj(value, endpoint)
        derp = o.opt_obj("derp_map")
        return cls(derp_map=DERPMap.from_obj(derp) if derp is not None else DERPMap())


@dataclass(frozen=True, slots=True)
class ListeningPort:
    process_name: str
    network: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"process_name": self.process_name, "network": self.network, "port": self.port}

    @classmethod
    def from_obj(cls, o: Obj) -> ListeningPort:
        port = o.integer("port")
        if not 0 <= port <= 65535:
            raise DecodeError(o.endpoint, o.at("port"), f"port {port} out of range")
        return cls(process_name=o.text("process_name", ""), network=o.text("network"), port=port)


@dataclass(frozen=True, slots=True)
class ListeningPortsResponse:
    ports: tuple[ListeningPort, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ports": [p.to_json() for p in self.ports]}

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> ListeningPortsResponse:
        o = Obj(value, endpoint)
        return cls(
            ports=tuple(o.array("ports", lambda v, p: ListeningPort.from_obj(Obj(v, endpoint, p))))
        )
