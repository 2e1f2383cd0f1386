"""Cloud detection: the pure DMI rules, reading a DMI folder, and the shape-checking probe."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import AUTH_AWS, AUTH_AZURE, AUTH_GOOGLE
from agent.errors import NoCloudDetected
from agent.identity.detect import (
    AZURE_ASSET_TAG,
    DmiFacts,
    ProbeTargets,
    classify,
    detect,
    from_cloud_id,
    probe,
    read_dmi,
)
from tests.fakes.metadata import FakeMetadata, WrongShapeServer


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (DmiFacts(sys_vendor="Amazon EC2", product_name="m5.large"), AUTH_AWS),
        (DmiFacts(bios_vendor="Amazon EC2"), AUTH_AWS),
        (DmiFacts(sys_vendor="Xen", product_name="HVM domU", bios_version="4.11.amazon"), AUTH_AWS),
        (
            DmiFacts(sys_vendor="Xen", hypervisor_uuid="ec2e1916-9099-7caf-fd21-0123456789ab"),
            AUTH_AWS,
        ),
        (
            DmiFacts(sys_vendor="Xen", hypervisor_uuid="EC2E1916-9099-7CAF-FD21-0123456789AB"),
            AUTH_AWS,
        ),
        (DmiFacts(sys_vendor="Google", product_name="Google Compute Engine"), AUTH_GOOGLE),
        (DmiFacts(product_name="Google"), AUTH_GOOGLE),
        (DmiFacts(sys_vendor="Google"), AUTH_GOOGLE),
        (
            DmiFacts(
                sys_vendor="Microsoft Corporation",
                product_name="Virtual Machine",
                chassis_asset_tag=AZURE_ASSET_TAG,
            ),
            AUTH_AZURE,
        ),
        # On-prem Hyper-V: same vendor strings, random asset tag -> not Azure.
        (
            DmiFacts(
                sys_vendor="Microsoft Corporation",
                product_name="Virtual Machine",
                chassis_asset_tag="1234-5678-9012-3456-7890-1234-56",
            ),
            None,
        ),
        (DmiFacts(sys_vendor="Xen", product_name="HVM domU"), None),  # plain Xen, not EC2
        (DmiFacts(sys_vendor="QEMU", product_name="Standard PC (Q35 + ICH9, 2009)"), None),
        (DmiFacts(), None),
    ],
)
def test_classify_follows_the_dmi_rules(facts: DmiFacts, expected: str | None) -> None:
    """Each DMI signature maps to its cloud; look-alikes map to nothing."""
    assert classify(facts) == expected


def test_read_dmi_reads_the_folder_and_tolerates_missing_files(tmp_path: Path) -> None:
    """Values are stripped; unreadable or missing files read as empty."""
    (tmp_path / "sys_vendor").write_text("Amazon EC2\n")
    (tmp_path / "chassis_asset_tag").write_text("Amazon EC2\n")
    hyp = tmp_path / "hypervisor-uuid"
    hyp.write_text("ec2abcd\n")
    facts = read_dmi(tmp_path, hyp)
    assert facts.sys_vendor == "Amazon EC2"
    assert facts.product_name == ""
    assert facts.hypervisor_uuid == "ec2abcd"
    assert read_dmi(tmp_path / "missing", tmp_path / "missing") == DmiFacts()


def _targets(url: str, host: str, timeout: float = 2.0) -> ProbeTargets:
    return ProbeTargets(aws_endpoint=url, gce_host=host, azure_endpoint=url, timeout=timeout)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("cloud", "method"), [("aws", AUTH_AWS), ("google", AUTH_GOOGLE), ("azure", AUTH_AZURE)]
)
async def test_probe_finds_the_one_cloud_that_answers(
    fake_metadata: FakeMetadata, cloud: str, method: str
) -> None:
    """Only the service whose reply has its cloud's shape is detected."""
    fake_metadata.clouds = frozenset({cloud})
    assert await probe(_targets(fake_metadata.url, fake_metadata.host)) == method


@pytest.mark.e2e
async def test_probe_sends_the_metadata_headers(fake_metadata: FakeMetadata) -> None:
    """The probe asks the way each service requires (it refuses requests without them)."""
    fake_metadata.clouds = frozenset({"google"})
    await probe(_targets(fake_metadata.url, fake_metadata.host))
    (root,) = [r for r in fake_metadata.requests if r.path == "/"]
    assert root.headers.get("Metadata-Flavor") == "Google"
    fake_metadata.clouds = frozenset({"azure"})
    fake_metadata.requests.clear()
    await probe(_targets(fake_metadata.url, fake_metadata.host))
    (versions,) = fake_metadata.seen("/metadata/versions")
    assert versions.headers.get("Metadata") == "true"


@pytest.mark.e2e
async def test_probe_rejects_a_listener_that_is_not_a_metadata_service(
    wrong_shape: WrongShapeServer,
) -> None:
    """A web server answering 200 to everything is not a cloud."""
    assert await probe(_targets(wrong_shape.url, wrong_shape.host)) is None


@pytest.mark.e2e
async def test_probe_gives_up_on_a_silent_service_within_its_deadline(
    fake_metadata: FakeMetadata,
) -> None:
    """A black hole costs at most the probe timeout, then means "no cloud"."""
    fake_metadata.silent = True
    started = time.monotonic()
    assert await probe(_targets(fake_metadata.url, fake_metadata.host, timeout=0.5)) is None
    assert time.monotonic() - started < 2.0


async def test_probe_with_nothing_listening_finds_nothing(closed_url: str) -> None:
    host = closed_url.removeprefix("http://")
    assert await probe(_targets(closed_url, host)) is None


@pytest.mark.e2e
async def test_detect_prefers_dmi_over_the_probe(fake_metadata: FakeMetadata) -> None:
    """DMI decides without any request when it is conclusive."""
    fake_metadata.clouds = frozenset({"google"})
    method = await detect(
        DmiFacts(sys_vendor="Amazon EC2"), _targets(fake_metadata.url, fake_metadata.host)
    )
    assert method == AUTH_AWS
    assert fake_metadata.requests == []


@pytest.mark.e2e
async def test_detect_without_any_cloud_names_the_setting(wrong_shape: WrongShapeServer) -> None:
    with pytest.raises(NoCloudDetected, match="CODER_AGENT_AUTH"):
        await detect(DmiFacts(), _targets(wrong_shape.url, wrong_shape.host))


@pytest.mark.parametrize(
    ("cloud_id", "expected"),
    [
        ("aws\n", AUTH_AWS),
        ("aws-china", AUTH_AWS),
        ("aws-gov", AUTH_AWS),
        ("azure", AUTH_AZURE),
        ("azure-china", AUTH_AZURE),
        ("gce", AUTH_GOOGLE),
        ("none", None),
        ("lxd", None),
        ("awsome", None),
        ("", None),
    ],
)
def test_cloud_init_cloud_id_maps_to_a_method(cloud_id: str, expected: str | None) -> None:
    assert from_cloud_id(cloud_id) == expected


def test_read_dmi_reads_the_cloud_id_file(tmp_path: Path) -> None:
    (tmp_path / "cloud-id").write_text("gce\n")
    facts = read_dmi(tmp_path / "no-dmi", tmp_path / "no-uuid", tmp_path / "cloud-id")
    assert facts.cloud_id == "gce"
    assert read_dmi(tmp_path, tmp_path / "x", tmp_path / "missing").cloud_id == ""


async def test_detect_takes_the_cloud_id_hint_without_any_request(closed_url: str) -> None:
    host = closed_url.removeprefix("http://")
    assert await detect(DmiFacts(cloud_id="azure"), _targets(closed_url, host)) == AUTH_AZURE
    # DMI, when conclusive, outranks the hint.
    facts = DmiFacts(sys_vendor="Amazon EC2", cloud_id="gce")
    assert await detect(facts, _targets(closed_url, host)) == AUTH_AWS


def _aws_disabled(url: str, host: str) -> ProbeTargets:
    return ProbeTargets(
        aws_endpoint=url, gce_host=host, azure_endpoint=url, timeout=2.0, aws_disabled=True
    )


@pytest.mark.e2e
async def test_aws_metadata_disabled_rules_aws_out(fake_metadata: FakeMetadata) -> None:
    """AWS_EC2_METADATA_DISABLED: neither DMI, the cloud-id hint nor the probe picks AWS,
    and the AWS metadata service is never asked."""
    fake_metadata.clouds = frozenset({"aws"})
    targets = _aws_disabled(fake_metadata.url, fake_metadata.host)
    for facts in (DmiFacts(sys_vendor="Amazon EC2"), DmiFacts(cloud_id="aws"), DmiFacts()):
        with pytest.raises(NoCloudDetected) as caught:
            await detect(facts, targets)
        if facts != DmiFacts():
            assert "AWS_EC2_METADATA_DISABLED" in str(caught.value)
    assert fake_metadata.seen("/latest/api/token") == []
    # Another cloud is still found.
    fake_metadata.clouds = frozenset({"aws", "google"})
    assert await detect(DmiFacts(sys_vendor="Amazon EC2"), targets) == AUTH_GOOGLE
    assert fake_metadata.seen("/latest/api/token") == []
