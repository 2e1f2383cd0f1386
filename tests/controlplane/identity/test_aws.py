"""AWS verifier: pinned keys (shipped and configured), raw-bytes signature, claims."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from controlplane.identity.aws import AwsKey, decode_signature, load_keys, verify_aws
from controlplane.identity.aws_certs import AWS_RSA_CERTIFICATES
from controlplane.identity.errors import InvalidIdentity
from tests.fakes.cloudkeys import AwsMaterial, make_aws_material, rsa_key


@pytest.fixture(scope="module")
def aws() -> AwsMaterial:
    return make_aws_material()


def _keys(aws: AwsMaterial) -> list[AwsKey]:
    return load_keys([aws.cert_pem], include_defaults=False)


def test_shipped_keys_load_and_reissued_certificates_pin_one_key() -> None:
    """Every shipped certificate parses; the 2014 and 2024 "other" certificates (the
    first one long expired) carry the same key, which is kept once."""
    keys = load_keys()
    certs = sum(len(v) for v in AWS_RSA_CERTIFICATES.values())
    assert len(keys) == certs - 1
    other = [k for k in keys if k.bucket == "other"]
    assert len(other) == 1
    assert hex(other[0].key.public_numbers().n).startswith("0x87bd18df")


def test_valid_document_verifies(aws: AwsMaterial) -> None:
    doc = aws.document()
    identity = verify_aws(doc, aws.sign(doc), _keys(aws))
    assert (identity.instance_id, identity.account_id, identity.region) == (
        aws.instance_id,
        aws.account_id,
        aws.region,
    )
    assert identity.key_bucket == "extra"


def test_signature_whitespace_is_tolerated(aws: AwsMaterial) -> None:
    doc = aws.document()
    wrapped = aws.sign(doc).replace("\n", "\r\n") + "\n"
    assert verify_aws(doc, wrapped, _keys(aws)).instance_id == aws.instance_id


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.replace('"m5.large"', '"m5.xlarge"'),
        lambda d: d + "\n",  # even a trailing newline: the bytes are what is signed
        lambda d: d.replace("  ", " "),  # re-serialised JSON is a different document
    ],
)
def test_tampered_document_is_rejected(aws: AwsMaterial, mutate: object) -> None:
    doc = aws.document()
    sig = aws.sign(doc)
    with pytest.raises(InvalidIdentity, match="does not verify"):
        verify_aws(mutate(doc), sig, _keys(aws))  # type: ignore[operator]


def test_wrong_key_is_rejected_even_with_the_shipped_keys(aws: AwsMaterial) -> None:
    doc = aws.document()
    with pytest.raises(InvalidIdentity, match="any trusted AWS key"):
        verify_aws(doc, aws.sign(doc, key=rsa_key("intruder")), load_keys())


def test_bad_base64_is_rejected() -> None:
    with pytest.raises(InvalidIdentity, match="decode signature"):
        decode_signature("abc*def")


def test_region_must_match_the_key_bucket(aws: AwsMaterial) -> None:
    """A document signed with one region's key cannot claim another region."""
    key = _keys(aws)[0].key
    assert AwsKey("cn", key).covers("cn-northwest-1")
    assert not AwsKey("cn", key).covers("us-east-1")
    assert AwsKey("other", key).covers("us-east-1")
    assert not AwsKey("other", key).covers("af-south-1")
    doc = aws.document()
    with pytest.raises(InvalidIdentity, match="claims region 'us-east-1'"):
        verify_aws(doc, aws.sign(doc), [AwsKey("af-south-1", key)])


def test_account_and_region_allow_lists(aws: AwsMaterial) -> None:
    doc = aws.document()
    sig = aws.sign(doc)
    keys = _keys(aws)
    verify_aws(doc, sig, keys, allowed_accounts=frozenset({aws.account_id}))
    with pytest.raises(InvalidIdentity, match="account '123456789012' is not allowed"):
        verify_aws(doc, sig, keys, allowed_accounts=frozenset({"999999999999"}))
    with pytest.raises(InvalidIdentity, match="region 'us-east-1' is not allowed"):
        verify_aws(doc, sig, keys, allowed_regions=frozenset({"eu-west-1"}))


@pytest.mark.parametrize(
    ("document", "match"),
    [("not json", "parse document"), ('["a"]', "not a JSON object"), ("{}", "no instanceId")],
)
def test_signed_but_malformed_documents(aws: AwsMaterial, document: str, match: str) -> None:
    with pytest.raises(InvalidIdentity, match=match):
        verify_aws(document, aws.sign(document), _keys(aws))


@pytest.mark.parametrize(
    ("bucket", "pem"), [(b, pem) for b, pems in AWS_RSA_CERTIFICATES.items() for pem in pems]
)
def test_every_shipped_certificate_carries_its_own_valid_signature(bucket: str, pem: str) -> None:
    """AWS's instance-identity certificates are self-signed: each must verify under its own
    key with its own hash (SHA-1 for the older regional ones), so a mangled copy fails."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.issuer == cert.subject, bucket
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    algorithm = cert.signature_hash_algorithm
    assert algorithm is not None
    public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)


@pytest.mark.parametrize(
    "region", ["ap-southeast-5", "ap-southeast-7", "ca-west-1", "mx-central-1", "ap-east-2"]
)
def test_regions_added_since_2024_have_their_own_key(region: str) -> None:
    keys = load_keys()
    (own,) = [k for k in keys if k.bucket == region]
    assert own.covers(region)
    assert not own.covers("us-east-1")
    # The shared "other" key no longer claims the region.
    (other,) = [k for k in keys if k.bucket == "other"]
    assert not other.covers(region)
