"""Which cloud is this? DMI first (no network), then a short probe of the metadata address.

DMI rules (docs/operations.md, "Cloud identity"): Azure by its fixed chassis asset tag
(on-prem Hyper-V shares the vendor strings, not the tag); Google by product name or vendor;
AWS by the vendor strings on Nitro, and on older Xen instances by ``bios_version`` or the
world-readable ``/sys/hypervisor/uuid`` starting with "ec2". The probe runs only when DMI
says nothing, as in a container on a VM, and it checks the *shape* of each reply: a TCP
connect to 169.254.169.254 succeeds in many sandboxes where nothing useful answers.

Between the two, cloud-init's ``/run/cloud-init/cloud-id`` (``aws``, ``aws-china``,
``azure``, ``gce`` ...) is a hint that needs no network. ``AWS_EC2_METADATA_DISABLED=true``
(the AWS SDKs' switch) rules AWS out: an agent that may not ask the instance metadata
service cannot fetch an AWS identity document.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import structlog

from agent.config import AUTH_AWS, AUTH_AZURE, AUTH_GOOGLE
from agent.errors import NoCloudDetected
from agent.identity.gcp import FLAVOR, FLAVOR_HEADER, metadata_base
from agent.identity.transport import metadata_client

log = structlog.get_logger()

AZURE_ASSET_TAG: Final = "7783-7084-3265-9085-8269-3286-77"  # ASCII codes of "MSFT AZURE VM"
GOOGLE_PRODUCTS: Final = frozenset({"Google Compute Engine", "Google"})
AMAZON_VENDOR: Final = "Amazon EC2"
DMI_FILES: Final = (
    "sys_vendor",
    "product_name",
    "bios_vendor",
    "bios_version",
    "chassis_asset_tag",
    "product_uuid",  # root-only (0400); read when we can, ignored when we cannot
)
_MAX_DMI_BYTES: Final = 256


@dataclass(frozen=True, slots=True)
class DmiFacts:
    sys_vendor: str = ""
    product_name: str = ""
    bios_vendor: str = ""
    bios_version: str = ""
    chassis_asset_tag: str = ""
    product_uuid: str = ""
    hypervisor_uuid: str = ""
    cloud_id: str = ""  # cloud-init's verdict, when cloud-init ran


def _read_small(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(_MAX_DMI_BYTES).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def read_dmi(
    dmi_dir: Path, hypervisor_uuid_path: Path, cloud_id_path: Path | None = None
) -> DmiFacts:
    values = {name: _read_small(dmi_dir / name) for name in DMI_FILES}
    cloud_id = _read_small(cloud_id_path) if cloud_id_path is not None else ""
    return DmiFacts(**values, hypervisor_uuid=_read_small(hypervisor_uuid_path), cloud_id=cloud_id)


def from_cloud_id(cloud_id: str) -> str | None:
    """cloud-init's cloud id as an auth method: ``aws``, ``aws-china``, ``aws-gov``;
    ``azure``, ``azure-china``; ``gce``. Anything else (``none``, ``lxd`` ...) says nothing."""
    name = cloud_id.strip().lower()
    if name == "aws" or name.startswith("aws-"):
        return AUTH_AWS
    if name == "azure" or name.startswith("azure-"):
        return AUTH_AZURE
    if name == "gce":
        return AUTH_GOOGLE
    return None


def classify(facts: DmiFacts) -> str | None:
    """The auth method DMI points to, or None when DMI is missing or inconclusive."""
    if facts.chassis_asset_tag == AZURE_ASSET_TAG:
        return AUTH_AZURE
    if facts.product_name in GOOGLE_PRODUCTS or facts.sys_vendor == "Google":
        return AUTH_GOOGLE
    if AMAZON_VENDOR in (facts.sys_vendor, facts.bios_vendor):
        return AUTH_AWS
    if "amazon" in facts.bios_version.lower():
        return AUTH_AWS
    if facts.hypervisor_uuid.lower().startswith("ec2"):
        return AUTH_AWS
    if facts.product_uuid.lower().startswith("ec2"):
        return AUTH_AWS
    return None


@dataclass(frozen=True, slots=True)
class ProbeTargets:
    aws_endpoint: str
    gce_host: str
    azure_endpoint: str
    timeout: float = 2.0
    aws_disabled: bool = False  # AWS_EC2_METADATA_DISABLED: never probe or pick AWS


async def _probe_google(http: httpx.AsyncClient, targets: ProbeTargets) -> bool:
    response = await http.get(
        metadata_base(targets.gce_host) + "/", headers={FLAVOR_HEADER: FLAVOR}
    )
    return response.status_code == 200 and response.headers.get(FLAVOR_HEADER) == FLAVOR


async def _probe_aws(http: httpx.AsyncClient, targets: ProbeTargets) -> bool:
    response = await http.put(
        targets.aws_endpoint.rstrip("/") + "/latest/api/token",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    if response.status_code != 200 or len(response.content) > 4096:
        return False
    ctype = response.headers.get("content-type", "text/plain")
    token = response.content.strip()
    return ctype.startswith("text/") and bool(token) and not any(b in token for b in b" \n<{")


async def _probe_azure(http: httpx.AsyncClient, targets: ProbeTargets) -> bool:
    response = await http.get(
        targets.azure_endpoint.rstrip("/") + "/metadata/versions", headers={"Metadata": "true"}
    )
    if response.status_code != 200:
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("apiVersions"), list)


Probe = Callable[[httpx.AsyncClient, ProbeTargets], Awaitable[bool]]
_PROBES: Final[tuple[tuple[str, Probe], ...]] = (
    (AUTH_GOOGLE, _probe_google),
    (AUTH_AWS, _probe_aws),
    (AUTH_AZURE, _probe_azure),
)


async def probe(targets: ProbeTargets) -> str | None:
    """Ask all three metadata services at once; the first whose reply has the right shape."""

    async def one(name: str, check: Probe) -> bool:
        try:
            return await check(http, targets)
        except Exception as exc:  # a probe answers yes or no; whatever went wrong is a no
            log.debug("identity.probe_failed", method=name, error=str(exc) or type(exc).__name__)
            return False

    timeout = targets.timeout
    probes = [(n, c) for n, c in _PROBES if not (n == AUTH_AWS and targets.aws_disabled)]
    async with metadata_client(timeout) as http:
        tasks = [asyncio.create_task(one(name, check)) for name, check in probes]
        try:
            async with asyncio.timeout(timeout):
                results = await asyncio.gather(*tasks)
        except TimeoutError:
            results = [t.done() and not t.cancelled() and t.result() for t in tasks]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for (name, _), ok in zip(probes, results, strict=True):
        if ok:
            return name
    return None


async def detect(facts: DmiFacts, targets: ProbeTargets) -> str:
    """The auth method for this machine; :class:`NoCloudDetected` when there is none."""
    ruled_out = False
    for source, method in (("dmi", classify(facts)), ("cloud-id", from_cloud_id(facts.cloud_id))):
        if method == AUTH_AWS and targets.aws_disabled:
            log.info("identity.aws_metadata_disabled", source=source)
            ruled_out = True
        elif method is not None:
            log.info("identity.detected", method=method, source=source)
            return method
    method = await probe(targets)
    if method is not None:
        log.info("identity.detected", method=method, source="probe")
        return method
    why = (
        "this looks like AWS but AWS_EC2_METADATA_DISABLED=true forbids its metadata service"
        if ruled_out
        else "DMI names no known cloud and no metadata service answered"
    )
    raise NoCloudDetected(
        f"no cloud detected: {why}; "
        "set CODER_AGENT_AUTH to token (with CODER_AGENT_TOKEN), aws-instance-identity, "
        "google-instance-identity or azure-instance-identity"
    )
