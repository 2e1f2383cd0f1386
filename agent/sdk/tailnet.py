"""Tailscale-shaped wire types: the DERP map and the coordinator's Node.

The DERP map keeps Tailscale's Go field names (``Regions``, ``RegionID``, ``HostName``,
``DERPPort``...) because that is what Coder really sends; the API docs' camelCase is wrong.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.sdk.codec import Obj, format_time
from agent.sdk.errors import DecodeError

# The agent's fixed tailnet address in Coder (tailnet.IP()).
AGENT_TAILNET_IP = "fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4"


@dataclass(frozen=True, slots=True)
class DERPNode:
    name: str
    region_id: int
    host_name: str
    cert_name: str = ""
    ipv4: str = ""
    ipv6: str = ""
    stun_port: int = 0
    stun_only: bool = False
    derp_port: int = 0
    insecure_for_tests: bool = False
    force_http: bool = False
    stun_test_ip: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Name": self.name, "RegionID": self.region_id}
        out["HostName"] = self.host_name
        optional: list[tuple[str, Any]] = [
            ("CertName", self.cert_name),
            ("IPv4", self.ipv4),
            ("IPv6", self.ipv6),
            ("STUNPort", self.stun_port),
            ("STUNOnly", self.stun_only),
            ("DERPPort", self.derp_port),
            ("InsecureForTests", self.insecure_for_tests),
            ("ForceHTTP", self.force_http),
            ("STUNTestIP", self.stun_test_ip),
        ]
        out.update((k, v) for k, v in optional if v)
        return out

    @classmethod
    def from_obj(cls, o: Obj) -> DERPNode:
        return cls(
            name=o.text("Name", ""),
            region_id=o.integer("RegionID", 0),
            host_name=o.text("HostName", ""),
            cert_name=o.text("CertName", ""),
            ipv4=o.text("IPv4", ""),
            ipv6=o.text("IPv6", ""),
            stun_port=o.integer("STUNPort", 0),
            stun_only=o.flag("STUNOnly", False),
            derp_port=o.integer("DERPPort", 0),
            insecure_for_tests=o.flag("InsecureForTests", False),
            force_http=o.flag("ForceHTTP", False),
            stun_test_ip=o.text("STUNTestIP", ""),
        )


@dataclass(frozen=True, slots=True)
class DERPRegion:
    region_id: int
    region_code: str
    region_name: str
    embedded_relay: bool = False
    avoid: bool = False
    nodes: tuple[DERPNode, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "EmbeddedRelay": self.embedded_relay,
            "RegionID": self.region_id,
            "RegionCode": self.region_code,
            "RegionName": self.region_name,
        }
        if self.avoid:
            out["Avoid"] = True
        out["Nodes"] = [n.to_json() for n in self.nodes]
        return out

    @classmethod
    def from_obj(cls, o: Obj) -> DERPRegion:
        return cls(
            region_id=o.integer("RegionID", 0),
            region_code=o.text("RegionCode", ""),
            region_name=o.text("RegionName", ""),
            embedded_relay=o.flag("EmbeddedRelay", False),
            avoid=o.flag("Avoid", False),
            nodes=tuple(o.array("Nodes", lambda v, p: DERPNode.from_obj(Obj(v, o.endpoint, p)))),
        )


@dataclass(frozen=True, slots=True)
class DERPMap:
    regions: dict[int, DERPRegion] = field(default_factory=dict)
    omit_default_regions: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Regions": {str(k): r.to_json() for k, r in sorted(self.regions.items())}
        }
        if self.omit_default_regions:
            out["omitDefaultRegions"] = True
        return out

    @classmethod
    def from_obj(cls, o: Obj) -> DERPMap:
        regions: dict[int, DERPRegion] = {}
        for key, region in o.mapping("Regions", lambda v, p: Obj(v, o.endpoint, p)).items():
            try:
                region_id = int(key)
            except ValueError:
                raise DecodeError(
                    o.endpoint, f"{o.path}.Regions", f"bad region key {key[:32]!r}"
                ) from None
            regions[region_id] = DERPRegion.from_obj(region)
        return cls(regions=regions, omit_default_regions=o.flag("omitDefaultRegions", False))

    def first_region_id(self) -> int:
        return min(self.regions) if self.regions else 0


def _hex_key(prefix: str) -> str:
    return f"{prefix}:{secrets.token_hex(32)}"


@dataclass(frozen=True, slots=True)
class Node:
    """A tailnet peer as the coordinator sees it (tailnet.Node)."""

    id: int
    as_of: datetime
    key: str
    disco: str
    preferred_derp: int = 0
    derp_latency: dict[str, float] = field(default_factory=dict)
    derp_forced_websockets: dict[str, str] = field(default_factory=dict)
    addresses: tuple[str, ...] = ()
    allowed_ips: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "as_of": format_time(self.as_of),
            "key": self.key,
            "disco": self.disco,
            "preferred_derp": self.preferred_derp,
            "derp_latency": self.derp_latency,
            "derp_forced_websockets": self.derp_forced_websockets,
            "addresses": list(self.addresses),
            "allowed_ips": list(self.allowed_ips),
            "endpoints": list(self.endpoints),
        }

    @classmethod
    def from_json(cls, value: object, endpoint: str, path: str = "$") -> Node:
        o = Obj(value, endpoint, path, fold_case=True)
        return cls(
            id=o.integer("id"),
            as_of=o.time("as_of"),
            key=o.text("key"),
            disco=o.text("disco"),
            preferred_derp=o.integer("preferred_derp", 0),
            derp_latency=o.float_map("derp_latency"),
            derp_forced_websockets=o.text_map("derp_forced_websockets"),
            addresses=tuple(o.text_list("addresses")),
            allowed_ips=tuple(o.text_list("allowed_ips")),
            endpoints=tuple(o.text_list("endpoints")),
        )

    @classmethod
    def new_agent_node(cls, preferred_derp: int, now: datetime | None = None) -> Node:
        """A fresh agent node. The keys are random: wsagent has no WireGuard data plane,
        so the node announces presence to the coordinator, not a reachable peer."""
        address = f"{AGENT_TAILNET_IP}/128"
        return cls(
            id=secrets.randbits(63),
            as_of=now or datetime.now(UTC),
            key=_hex_key("nodekey"),
            disco=_hex_key("discokey"),
            preferred_derp=preferred_derp,
            addresses=(address,),
            allowed_ips=(address,),
        )


def decode_nodes(value: object, endpoint: str) -> list[Node]:
    """Decode the coordinator's array of nodes."""
    if not isinstance(value, list):
        raise DecodeError(endpoint, "$", "expected array of nodes")
    return [Node.from_json(v, endpoint, f"$[{i}]") for i, v in enumerate(value)]
