"""Typed models for every request and response of the agent API.

Each model has ``to_json()`` (key names and order as Coder's Go structs emit them) and
``from_json(value, endpoint, fold_case=...)``. Durations named ``*_timeout`` and
``report_interval`` are integer nanoseconds on the wire; ``*_seconds`` and healthcheck
``interval`` are integer seconds (docs/protocol.md, "Conventions").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from agent.sdk.agentmetadata import MetadataDescription, decode_descriptions
from agent.sdk.codec import MISSING, Obj, check_str
from agent.sdk.errors import DecodeError, ValidationError
from agent.sdk.tailnet import DERPMap

NANOS_PER_SECOND: Final = 1_000_000_000

LIFECYCLE_STATES: Final = frozenset(
    {
        "created",
        "starting",
        "start_timeout",
        "start_error",
        "ready",
        "shutting_down",
        "shutdown_timeout",
        "shutdown_error",
        "off",
    }
)
APP_HEALTHS: Final = frozenset({"disabled", "initializing", "healthy", "unhealthy"})
REPORTABLE_APP_HEALTHS: Final = frozenset({"initializing", "healthy", "unhealthy"})
SHARING_LEVELS: Final = frozenset({"owner", "authenticated", "public"})
AGENT_STATUSES: Final = frozenset({"connecting", "connected", "disconnected", "timeout"})


# ---------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """Coder's error body: ``{message, detail?, validations?}``."""

    message: str
    detail: str = ""
    validations: tuple[ValidationError, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.detail:
            out["detail"] = self.detail
        if self.validations:
            out["validations"] = [{"field": v.field, "detail": v.detail} for v in self.validations]
        return out

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> ErrorResponse:
        o = Obj(value, endpoint)
        validations = o.array(
            "validations",
            lambda v, p: _validation(Obj(v, endpoint, p)),
        )
        return cls(
            message=o.text("message", ""),
            detail=o.text("detail", ""),
            validations=tuple(validations),
        )


def _validation(o: Obj) -> ValidationError:
    return ValidationError(field=o.text("field", ""), detail=o.text("detail", ""))


# ---------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class AWSInstanceIdentityToken:
    signature: str
    document: str

    def to_json(self) -> dict[str, Any]:
        return {"signature": self.signature, "document": self.document}

    @classmethod
    def from_json(
        cls, value: object, endpoint: str, *, fold_case: bool = False
    ) -> AWSInstanceIdentityToken:
        o = Obj(value, endpoint, fold_case=fold_case)
        return cls(signature=o.text("signature"), document=o.text("document"))


@dataclass(frozen=True, slots=True)
class AzureInstanceIdentityToken:
    signature: str
    encoding: str

    def to_json(self) -> dict[str, Any]:
        return {"signature": self.signature, "encoding": self.encoding}

    @classmethod
    def from_json(
        cls, value: object, endpoint: str, *, fold_case: bool = False
    ) -> AzureInstanceIdentityToken:
        o = Obj(value, endpoint, fold_case=fold_case)
        return cls(signature=o.text("signature"), encoding=o.text("encoding"))


@dataclass(frozen=True, slots=True)
class GoogleInstanceIdentityToken:
    json_web_token: str

    def to_json(self) -> dict[str, Any]:
        return {"json_web_token": self.json_web_token}

    @classmethod
    def from_json(
        cls, value: object, endpoint: str, *, fold_case: bool = False
    ) -> GoogleInstanceIdentityToken:
        o = Obj(value, endpoint, fold_case=fold_case)
        return cls(json_web_token=o.text("json_web_token"))


@dataclass(frozen=True, slots=True)
class AuthenticateResponse:
    session_token: str

    def to_json(self) -> dict[str, Any]:
        return {"session_token": self.session_token}

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> AuthenticateResponse:
        o = Obj(value, endpoint)
        token = o.text("session_token")
        if not token:
            raise DecodeError(endpoint, "$.session_token", "empty session token")
        return cls(session_token=token)


# ---------------------------------------------------------------- metadata


@dataclass(frozen=True, slots=True)
class Healthcheck:
    url: str = ""
    interval: int = 0  # seconds
    threshold: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "interval": self.interval, "threshold": self.threshold}

    @classmethod
    def from_obj(cls, o: Obj) -> Healthcheck:
        return cls(
            url=o.text("url", ""),
            interval=o.integer("interval", 0),
            threshold=o.integer("threshold", 0),
        )


@dataclass(frozen=True, slots=True)
class WorkspaceApp:
    id: str
    url: str = ""
    external: bool = False
    slug: str = ""
    display_name: str = ""
    command: str = ""
    icon: str = ""
    subdomain: bool = False
    sharing_level: str = "owner"
    healthcheck: Healthcheck = field(default_factory=Healthcheck)
    health: str = "disabled"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "external": self.external,
            "slug": self.slug,
            "display_name": self.display_name,
        }
        if self.command:
            out["command"] = self.command
        if self.icon:
            out["icon"] = self.icon
        out["subdomain"] = self.subdomain
        out["sharing_level"] = self.sharing_level
        out["healthcheck"] = self.healthcheck.to_json()
        out["health"] = self.health
        return out

    @classmethod
    def from_obj(cls, o: Obj) -> WorkspaceApp:
        return cls(
            id=o.uuid("id"),
            url=o.text("url", ""),
            external=o.flag("external", False),
            slug=o.text("slug", ""),
            display_name=o.text("display_name", ""),
            command=o.text("command", ""),
            icon=o.text("icon", ""),
            subdomain=o.flag("subdomain", False),
            sharing_level=o.text("sharing_level", "owner"),
            healthcheck=Healthcheck.from_obj(o.obj("healthcheck", {})),
            health=o.one_of("health", APP_HEALTHS) if "health" in o.raw else "disabled",
        )


def decode_apps(o: Obj, key: str) -> list[WorkspaceApp]:
    return o.array(key, lambda v, p: WorkspaceApp.from_obj(Obj(v, o.endpoint, p)))


@dataclass(frozen=True, slots=True)
class Metadata:
    """``GET /me/metadata`` (agentsdk.Metadata)."""

    git_auth_configs: int = 0
    vscode_port_proxy_uri: str = ""
    apps: tuple[WorkspaceApp, ...] = ()
    derpmap: DERPMap = field(default_factory=DERPMap)
    environment_variables: dict[str, str] = field(default_factory=dict)
    startup_script: str = ""
    startup_script_timeout_ns: int = 0
    directory: str = ""
    motd_file: str = ""
    shutdown_script: str = ""
    shutdown_script_timeout_ns: int = 0
    metadata: tuple[MetadataDescription, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "git_auth_configs": self.git_auth_configs,
            "vscode_port_proxy_uri": self.vscode_port_proxy_uri,
            "apps": [a.to_json() for a in self.apps],
            "derpmap": self.derpmap.to_json(),
            "environment_variables": self.environment_variables,
            "startup_script": self.startup_script,
            "startup_script_timeout": self.startup_script_timeout_ns,
            "directory": self.directory,
            "motd_file": self.motd_file,
            "shutdown_script": self.shutdown_script,
            "shutdown_script_timeout": self.shutdown_script_timeout_ns,
            "metadata": [m.to_json() for m in self.metadata],
        }

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> Metadata:
        # Like Go's decoder, a missing field takes its zero value; a field that is present
        # must have the right type (null only where Go encodes nil slices and maps).
        o = Obj(value, endpoint)
        derp = o.opt_obj("derpmap")
        timeout = o.integer("startup_script_timeout", 0)
        if timeout < 0:
            raise DecodeError(endpoint, "$.startup_script_timeout", "negative duration")
        shutdown_timeout = o.integer("shutdown_script_timeout", 0)
        if shutdown_timeout < 0:
            raise DecodeError(endpoint, "$.shutdown_script_timeout", "negative duration")
        return cls(
            git_auth_configs=o.integer("git_auth_configs", 0),
            vscode_port_proxy_uri=o.text("vscode_port_proxy_uri", ""),
            apps=tuple(decode_apps(o, "apps")),
            derpmap=DERPMap.from_obj(derp) if derp is not None else DERPMap(),
            environment_variables=o.text_map("environment_variables"),
            startup_script=o.text("startup_script", ""),
            startup_script_timeout_ns=timeout,
            directory=o.text("directory", ""),
            motd_file=o.text("motd_file", ""),
            shutdown_script=o.text("shutdown_script", ""),
            shutdown_script_timeout_ns=shutdown_timeout,
            metadata=tuple(decode_descriptions(o, "metadata")),
        )

    @property
    def startup_script_timeout(self) -> float:
        """Seconds; 0 means no timeout."""
        return self.startup_script_timeout_ns / NANOS_PER_SECOND

    @property
    def shutdown_script_timeout(self) -> float:
        """Seconds; 0 means the template set none (the agent then applies its default)."""
        return self.shutdown_script_timeout_ns / NANOS_PER_SECOND


# ---------------------------------------------------------------- agent posts


@dataclass(frozen=True, slots=True)
class PostStartupRequest:
    version: str
    expanded_directory: str

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "expanded_directory": self.expanded_directory}

    @classmethod
    def from_json(
        cls, value: object, endpoint: str, *, fold_case: bool = False
    ) -> PostStartupRequest:
        o = Obj(value, endpoint, fold_case=fold_case)
        return cls(
            version=o.text("version", ""), expanded_directory=o.text("expanded_directory", "")
        )


@dataclass(frozen=True, slots=True)
class PostLifecycleRequest:
    state: str

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state}

    @classmethod
    def from_json(
        cls, value: object, endpoint: str, *, fold_case: bool = False
    ) -> PostLifecycleRequest:
        o = Obj(value, endpoint, fold_case=fold_case)
        return cls(state=o.text("state", ""))


@dataclass(frozen=True, slots=True)
class PostAppHealthsRequest:
    """The Go struct has no JSON tag, so the key is ``Healths``; servers accept any case."""

    healths: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"Healths": self.healths}

    @classmethod
    def from_json(
        cls, value: object, endpoint: str, *, fold_case: bool = True
    ) -> PostAppHealthsRequest:
        o = Obj(value, endpoint, fold_case=fold_case)
        return cls(healths=o.mapping("Healths", lambda v, p: check_str(v, endpoint, p)))


# Agents report a handful of protocols ("ssh", "vscode", "jetbrains", "reconnecting_pty");
# the caps keep one stored report small whatever a client sends.
MAX_STATS_PROTOCOLS: Final = 16
# Coder's names for the two counts since v0.19 (the seed's are conns_by_proto, num_comms).
LATER_CONNS: Final = "connections_by_proto"
LATER_COUNT: Final = "connection_count"
MAX_STATS_PROTOCOL_NAME: Final = 64


@dataclass(frozen=True, slots=True)
class Stats:
    """``POST /me/report-stats``: per-window deltas."""

    conns_by_proto: dict[str, int] = field(default_factory=dict)
    num_comms: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "conns_by_proto": self.conns_by_proto,
            "num_comms": self.num_comms,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
        }

    @classmethod
    def from_json(cls, value: object, endpoint: str, *, fold_case: bool = False) -> Stats:
        o = Obj(value, endpoint, fold_case=fold_case)
        # Coder's agents since v0.19 spell the two counts connections_by_proto and
        # connection_count; the seed's names win when both are sent.
        conns_key = "conns_by_proto"
        if o.get(conns_key, None) is None and o.get(LATER_CONNS, None) is not None:
            conns_key = LATER_CONNS
        conns = o.int_map(conns_key)
        if len(conns) > MAX_STATS_PROTOCOLS:
            raise DecodeError(
                endpoint,
                o.at(conns_key),
                f"{len(conns)} protocols; at most {MAX_STATS_PROTOCOLS} are accepted",
            )
        for name in conns:
            if not 0 < len(name) <= MAX_STATS_PROTOCOL_NAME:
                raise DecodeError(
                    endpoint,
                    o.at(conns_key),
                    f"protocol name of {len(name)} characters; 1 to "
                    f"{MAX_STATS_PROTOCOL_NAME} are accepted",
                )
        return cls(
            conns_by_proto=conns,
            num_comms=o.integer("num_comms", o.integer(LATER_COUNT, 0)),
            rx_packets=o.integer("rx_packets", 0),
            rx_bytes=o.integer("rx_bytes", 0),
            tx_packets=o.integer("tx_packets", 0),
            tx_bytes=o.integer("tx_bytes", 0),
        )

    @property
    def is_idle(self) -> bool:
        return self.rx_bytes == 0 and self.tx_bytes == 0


@dataclass(frozen=True, slots=True)
class StatsResponse:
    report_interval_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"report_interval": self.report_interval_ns}

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> StatsResponse:
        o = Obj(value, endpoint)
        return cls(report_interval_ns=o.integer("report_interval"))


# ---------------------------------------------------------------- git


@dataclass(frozen=True, slots=True)
class GitAuthResponse:
    username: str = ""
    password: str = ""
    url: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "url": self.url}

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> GitAuthResponse:
        o = Obj(value, endpoint)
        return cls(
            username=o.text("username", ""), password=o.text("password", ""), url=o.text("url", "")
        )


@dataclass(frozen=True, slots=True)
class GitSSHKey:
    public_key: str
    private_key: str

    def to_json(self) -> dict[str, Any]:
        return {"public_key": self.public_key, "private_key": self.private_key}

    @classmethod
    def from_json(cls, value: object, endpoint: str) -> GitSSHKey:
        o = Obj(value, endpoint)
        return cls(public_key=o.text("public_key"), private_key=o.text("private_key"))


__all__ = [
    "APP_HEALTHS",
    "LIFECYCLE_STATES",
    "MISSING",
    "NANOS_PER_SECOND",
    "AWSInstanceIdentityToken",
    "AuthenticateResponse",
    "AzureInstanceIdentityToken",
    "ErrorResponse",
    "GitAuthResponse",
    "GitSSHKey",
    "GoogleInstanceIdentityToken",
    "Healthcheck",
    "Metadata",
    "PostAppHealthsRequest",
    "PostLifecycleRequest",
    "PostStartupRequest",
    "Stats",
    "StatsResponse",
    "WorkspaceApp",
]
