"""Azure issuing CAs fetched from the signer's AIA URL: allow-listed hosts only, cached,
and never a way around the configured roots."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from controlplane.identity.aia import allowed
from controlplane.identity.errors import InvalidIdentity
from controlplane.identity.service import IdentityService
from tests.e2e.identity.conftest import identity_config
from tests.fakes.cloudkeys import AzureMaterial, make_azure_material, make_cert
from tests.fakes.metadata import FakeMetadata


def _signed_with_aia(az: AzureMaterial, url: str) -> str:
    leaf = make_cert(
        "metadata.azure.com",
        az.leaf_key,
        issuer_cn="azure test issuing CA",
        issuer_key=az.inter_key,
        san=["eastus.metadata.azure.com"],
        aia_url=url,
    )
    return az.sign(az.content(), leaf=leaf)


def _service(fake: FakeMetadata, hosts: frozenset[str]) -> IdentityService:
    # Trust the root only: the intermediate must come from the AIA URL.
    return IdentityService(identity_config(fake, azure_intermediates=(), azure_aia_hosts=hosts))


@pytest.mark.e2e
async def test_missing_intermediate_is_fetched_once_and_cached(fake_metadata: FakeMetadata) -> None:
    az = fake_metadata.azure
    fake_metadata.files["/aia/issuing.crt"] = az.intermediate.public_bytes(Encoding.DER)
    service = _service(fake_metadata, frozenset({fake_metadata.host}))
    signature = _signed_with_aia(az, fake_metadata.url + "/aia/issuing.crt")
    assert (await service.azure(signature)).vm_id == az.vm_id
    assert (await service.azure(signature)).vm_id == az.vm_id
    assert service.aia.downloads == 1
    assert len(fake_metadata.seen("/aia/")) == 1


@pytest.mark.e2e
async def test_hosts_outside_the_allow_list_are_not_contacted(fake_metadata: FakeMetadata) -> None:
    az = fake_metadata.azure
    fake_metadata.files["/aia/issuing.crt"] = az.intermediate.public_bytes(Encoding.DER)
    service = _service(fake_metadata, frozenset({"www.microsoft.com"}))
    with pytest.raises(InvalidIdentity, match="no trusted chain"):
        await service.azure(_signed_with_aia(az, fake_metadata.url + "/aia/issuing.crt"))
    assert fake_metadata.seen("/aia/") == []


@pytest.mark.e2e
async def test_a_fetched_issuer_still_needs_a_trusted_root(fake_metadata: FakeMetadata) -> None:
    rogue = make_azure_material("rogue-aia")
    fake_metadata.files["/aia/rogue.crt"] = rogue.intermediate.public_bytes(Encoding.PEM)
    service = _service(fake_metadata, frozenset({fake_metadata.host}))
    signature = _signed_with_aia(rogue, fake_metadata.url + "/aia/rogue.crt")
    with pytest.raises(InvalidIdentity, match="no trusted chain"):
        await service.azure(signature)
    assert service.aia.downloads == 1


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://www.microsoft.com/pkiops/certs/x.crt", True),
        ("https://cacerts.digicert.com/DigiCertGlobalRootG2.crt", True),
        ("http://www.microsoft.com:8080/x.crt", False),
        ("http://evil.example/x.crt", False),
        ("ftp://www.microsoft.com/x.crt", False),
        ("http://user@www.microsoft.com/x.crt", False),
        ("http://127.0.0.1:5000/x.crt", True),
        ("http://127.0.0.1:5001/x.crt", False),
    ],
)
def test_allow_list(url: str, ok: bool) -> None:
    hosts = frozenset({"www.microsoft.com", "cacerts.digicert.com", "127.0.0.1:5000"})
    assert allowed(url, hosts) is ok
