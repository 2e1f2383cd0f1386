"""Azure verifier: PKCS#7 content signature (both shapes), chain, signer name, time, nonce."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from asn1crypto import cms  # type: ignore[import-untyped]

from controlplane.identity.azure import SIGNER_NAME, verify_azure
from controlplane.identity.errors import InvalidIdentity
from tests.fakes.cloudkeys import AzureMaterial, make_azure_material, make_cert, rsa_key


@pytest.fixture(scope="module")
def az() -> AzureMaterial:
    return make_azure_material()


def _verify(az: AzureMaterial, signature: str, **kwargs: Any) -> Any:
    kwargs.setdefault("roots", [az.root])
    kwargs.setdefault("intermediates", [az.intermediate])
    kwargs.setdefault("now", dt.datetime.now(dt.UTC))
    return verify_azure(signature, **kwargs)


def _replace_content(signature: str, content: bytes) -> str:
    """Re-encode the SignedData with other attached content and the original signature."""
    info = cms.ContentInfo.load(base64.b64decode(signature))
    info["content"]["encap_content_info"]["content"] = content
    return base64.b64encode(info.dump(force=True)).decode()


@pytest.mark.parametrize("attributes", [False, True])
def test_valid_document_in_both_shapes(az: AzureMaterial, attributes: bool) -> None:
    """Azure's shape (no signed attributes) and the CMS default (with them) both verify."""
    sig = az.sign(az.content("0123456789"), attributes=attributes)
    identity = _verify(az, sig, expected_nonce="0123456789")
    assert identity.vm_id == az.vm_id
    assert identity.subscription_id == az.subscription_id
    assert identity.signer == "eastus.metadata.azure.com"


@pytest.mark.parametrize("attributes", [False, True])
def test_tampered_content_is_rejected(az: AzureMaterial, attributes: bool) -> None:
    """The content signature is checked (Coder's 2023 code checked only the chain)."""
    original = az.content()
    sig = az.sign(original, attributes=attributes)
    assert _verify(az, _replace_content(sig, original)).vm_id == az.vm_id  # control
    forged = _replace_content(sig, original.replace(az.vm_id.encode(), b"f" * 36))
    match = "messageDigest" if attributes else "content signature does not verify"
    with pytest.raises(InvalidIdentity, match=match):
        _verify(az, forged)


def test_signature_by_another_key_with_the_genuine_certificate(az: AzureMaterial) -> None:
    sig = az.sign(az.content(), leaf_key=rsa_key("intruder"))
    with pytest.raises(InvalidIdentity, match="content signature does not verify"):
        _verify(az, sig)


def test_untrusted_root_is_rejected(az: AzureMaterial) -> None:
    rogue = make_azure_material("rogue")
    with pytest.raises(InvalidIdentity, match="no trusted chain"):
        _verify(az, rogue.sign(rogue.content()))
    # The rogue chain's own intermediate does not help without its root being trusted.
    with pytest.raises(InvalidIdentity, match="no trusted chain"):
        _verify(az, rogue.sign(rogue.content()), intermediates=[rogue.intermediate])


def test_missing_intermediate_is_rejected(az: AzureMaterial) -> None:
    with pytest.raises(InvalidIdentity, match="no trusted chain"):
        _verify(az, az.sign(az.content()), intermediates=[])


def test_leaf_signed_directly_by_a_root(az: AzureMaterial) -> None:
    leaf = make_cert(
        "metadata.azure.com",
        az.leaf_key,
        issuer_cn="azure test root",
        issuer_key=az.root_key,
        san=["metadata.azure.com"],
    )
    sig = az.sign(az.content(), leaf=leaf)
    assert _verify(az, sig, intermediates=[]).vm_id == az.vm_id


def test_expired_signer_certificate_is_rejected(az: AzureMaterial) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    leaf = make_cert(
        "metadata.azure.com",
        az.leaf_key,
        issuer_cn="azure test issuing CA",
        issuer_key=az.inter_key,
        san=["metadata.azure.com"],
        not_before=past - dt.timedelta(days=1),
        not_after=past,
    )
    with pytest.raises(InvalidIdentity, match="validity period"):
        _verify(az, az.sign(az.content(), leaf=leaf))


@pytest.mark.parametrize(
    ("cn", "san"),
    [
        ("metadata.azure.com.evil.example", []),
        ("xmetadata.azure.com", []),
        ("metadata.azure.com", ["evil.example"]),  # SAN wins over CN when present
    ],
)
def test_signer_outside_azure_metadata_is_rejected(
    az: AzureMaterial, cn: str, san: list[str]
) -> None:
    leaf = make_cert(
        cn, az.leaf_key, issuer_cn="azure test issuing CA", issuer_key=az.inter_key, san=san
    )
    with pytest.raises(InvalidIdentity, match="not an Azure metadata service"):
        _verify(az, az.sign(az.content(), leaf=leaf))


@pytest.mark.parametrize(
    "name",
    [
        "metadata.azure.com",
        "eastus.metadata.azure.com",
        "usgovvirginia.metadata.azure.us",
        "chinaeast.metadata.azure.cn",
        "germanycentral.metadata.microsoftazure.de",
    ],
)
def test_signer_name_pattern_accepts_sovereign_clouds(name: str) -> None:
    assert SIGNER_NAME.match(name)


def test_time_stamp_checks(az: AzureMaterial) -> None:
    now = dt.datetime.now(dt.UTC)
    stale = az.sign(az.content(created=now - dt.timedelta(hours=2)))
    with pytest.raises(InvalidIdentity, match="stale timeStamp"):
        _verify(az, stale, now=now, max_age=3600)
    expired = az.sign(
        az.content(created=now - dt.timedelta(minutes=20), lifetime=dt.timedelta(minutes=5))
    )
    with pytest.raises(InvalidIdentity, match="expired"):
        _verify(az, expired, now=now)
    future = az.sign(az.content(created=now + dt.timedelta(hours=1)))
    with pytest.raises(InvalidIdentity, match="future"):
        _verify(az, future, now=now)
    no_stamp = az.sign(az.content(timeStamp=None))
    with pytest.raises(InvalidIdentity, match="createdOn"):
        _verify(az, no_stamp, now=now)


def test_nonce_mismatch_and_subscription_allow_list(az: AzureMaterial) -> None:
    sig = az.sign(az.content("1111111111"))
    with pytest.raises(InvalidIdentity, match="nonce mismatch"):
        _verify(az, sig, expected_nonce="2222222222")
    _verify(az, sig, allowed_subscriptions=frozenset({az.subscription_id}))
    with pytest.raises(InvalidIdentity, match="subscription"):
        _verify(az, sig, allowed_subscriptions=frozenset({"another-subscription"}))


@pytest.mark.parametrize(
    ("signature", "match"),
    [
        ("***", "decode signature"),
        (base64.b64encode(b"\x30\x03\x02\x01\x01").decode(), "PKCS#7|malformed"),
        (base64.b64encode(b"hello world").decode(), "PKCS#7|malformed"),
    ],
)
def test_garbage_is_rejected(az: AzureMaterial, signature: str, match: str) -> None:
    with pytest.raises(InvalidIdentity, match=match):
        _verify(az, signature)


def test_document_without_vm_id(az: AzureMaterial) -> None:
    with pytest.raises(InvalidIdentity, match="vmId"):
        _verify(az, az.sign(az.content(vmId=None)))


# Microsoft's sample response from the IMDS documentation ("Attested data", 2018): a real
# Azure signature over real Azure-shaped content. It has no signed attributes and puts the
# sha256WithRSAEncryption OID where the digest algorithm belongs; its self-signed test
# certificate expired in 2018, so only the content signature and the name are checked.
MICROSOFT_SAMPLE = (
    "MIIEEgYJKoZIhvcNAQcCoIIEAzCCA/8CAQExDzANBgkqhkiG9w0BAQsFADCBugYJKoZIhvcNAQcBoIGsBIGpeyJu"
    "b25jZSI6IjEyMzQ1NjY3NjYiLCJwbGFuIjp7Im5hbWUiOiIiLCJwcm9kdWN0IjoiIiwicHVibGlzaGVyIjoiIn0s"
    "InRpbWVTdGFtcCI6eyJjcmVhdGVkT24iOiIxMS8yMC8xOCAyMjowNzozOSAtMDAwMCIsImV4cGlyZXNPbiI6IjEx"
    "LzIwLzE4IDIyOjA4OjI0IC0wMDAwIn0sInZtSWQiOiIifaCCAj8wggI7MIIBpKADAgECAhBnxW5Kh8dslEBA0E2m"
    "IBJ0MA0GCSqGSIb3DQEBBAUAMCsxKTAnBgNVBAMTIHRlc3RzdWJkb21haW4ubWV0YWRhdGEuYXp1cmUuY29tMB4X"
    "DTE4MTEyMDIxNTc1N1oXDTE4MTIyMDIxNTc1NlowKzEpMCcGA1UEAxMgdGVzdHN1YmRvbWFpbi5tZXRhZGF0YS5h"
    "enVyZS5jb20wgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGBAML/tBo86ENWPzmXZ0kPkX5dY5QZ150mA8lommsz"
    "E71x2sCLonzv4/UWk4H+jMMWRRwIea2CuQ5RhdWAHvKq6if4okKNt66fxm+YTVz9z0CTfCLmLT+nsdfOAsG1xZpp"
    "EapC0Cd9vD6NCKyE8aYI1pliaeOnFjG0WvMY04uWz2MdAgMBAAGjYDBeMFwGA1UdAQRVMFOAENnYkHLa04Ut4Mpt"
    "7TkJFfyhLTArMSkwJwYDVQQDEyB0ZXN0c3ViZG9tYWluLm1ldGFkYXRhLmF6dXJlLmNvbYIQZ8VuSofHbJRAQNBN"
    "piASdDANBgkqhkiG9w0BAQQFAAOBgQCLSM6aX5Bs1KHCJp4VQtxZPzXF71rVKCocHy3N9PTJQ9Fpnd+bYw2vSpQH"
    "g/AiG82WuDFpPReJvr7Pa938mZqW9HUOGjQKK2FYDTg6fXD8pkPdyghlX5boGWAMMrf7bFkup+lsT+n2tRw2wbNk"
    "nO1tQ0wICtqy2VqzWwLi45RBwTGB6DCB5QIBATA/MCsxKTAnBgNVBAMTIHRlc3RzdWJkb21haW4ubWV0YWRhdGEu"
    "YXp1cmUuY29tAhBnxW5Kh8dslEBA0E2mIBJ0MA0GCSqGSIb3DQEBCwUAMA0GCSqGSIb3DQEBAQUABIGAld1BM/yY"
    "Iqqv8SDE4kjQo3Ul/IKAVR8ETKcve5BAdGSNkTUooUGVniTXeuvDj5NkmazOaKZp9fEtByqqPOyw/nlXaZgOO44H"
    "DGiPUJ90xVYmfeK6p9RpJBu6kiKhnnYTelUk5u75phe5ZbMZfBhuPhXmYAdjc7Nmw97nx8NnprQ="
)


def test_microsofts_published_sample_verifies() -> None:
    from controlplane.identity.azure import check_signer_name, open_signed_data

    signed = open_signed_data(MICROSOFT_SAMPLE)
    assert b'"nonce":"1234566766"' in signed.content
    assert check_signer_name(signed.signer) == "testsubdomain.metadata.azure.com"
    tampered = _replace_content(
        MICROSOFT_SAMPLE, signed.content.replace(b"1234566766", b"1234566767")
    )
    with pytest.raises(InvalidIdentity, match="content signature does not verify"):
        open_signed_data(tampered)
