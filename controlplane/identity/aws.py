"""AWS: RSA PKCS#1 v1.5 / SHA-256 over the raw document bytes, against pinned keys.

The document is verified exactly as the agent forwarded it (never re-serialised); only
after the signature holds is it parsed. The signature is base64 with line breaks, so it is
decoded tolerantly (whitespace dropped, padding checked). Keys are pinned, not
certificates: certificate dates are ignored on purpose (see ``aws_certs``).

Anyone with an AWS account can produce a valid document for their own instance, so the
``accountId`` allow-list is what makes this safe on a shared control plane.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from controlplane.identity.aws_certs import AWS_RSA_CERTIFICATES
from controlplane.identity.errors import InvalidIdentity

EXTRA_BUCKET = "extra"  # keys added by configuration: valid for any region
MAX_DOCUMENT_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class AwsKey:
    bucket: str  # "other", a region name, "cn", "us-gov" or "extra"
    key: rsa.RSAPublicKey

    def covers(self, region: str) -> bool:
        """Whether a document claiming ``region`` may be signed by this key."""
        if self.bucket == EXTRA_BUCKET:
            return True
        if self.bucket == "other":
            return not any(_bucket_matches(b, region) for b in AWS_RSA_CERTIFICATES if b != "other")
        return _bucket_matches(self.bucket, region)


def _bucket_matches(bucket: str, region: str) -> bool:
    if bucket in ("cn", "us-gov"):
        return region.startswith(bucket + "-")
    return region == bucket


@dataclass(frozen=True, slots=True)
class AwsIdentity:
    instance_id: str
    account_id: str
    region: str
    key_bucket: str


def load_keys(extra_pems: Iterable[str] = (), *, include_defaults: bool = True) -> list[AwsKey]:
    """The shipped keys (one per distinct modulus) plus certificates/keys from config."""
    keys: list[AwsKey] = []
    seen: set[int] = set()

    def add(bucket: str, cert: x509.Certificate) -> None:
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise ValueError(f"AWS certificate for {bucket} does not hold an RSA key")
        modulus = public.public_numbers().n
        if modulus not in seen:
            seen.add(modulus)
            keys.append(AwsKey(bucket, public))

    if include_defaults:
        for bucket, pems in AWS_RSA_CERTIFICATES.items():
            for pem in pems:
                add(bucket, x509.load_pem_x509_certificate(pem.encode()))
    for pem in extra_pems:
        for cert in x509.load_pem_x509_certificates(pem.encode()):
            add(EXTRA_BUCKET, cert)
    return keys


def decode_signature(signature: str) -> bytes:
    compact = "".join(signature.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidIdentity(f"decode signature: {exc}") from exc


def verify_aws(
    document: str,
    signature: str,
    keys: Iterable[AwsKey],
    *,
    allowed_accounts: frozenset[str] = frozenset(),
    allowed_regions: frozenset[str] = frozenset(),
) -> AwsIdentity:
    try:
        raw = document.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON "\ud800" escape
        raise InvalidIdentity("document is not valid UTF-8 text") from exc
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InvalidIdentity("document too large")
    sig = decode_signature(signature)
    matched: AwsKey | None = None
    for candidate in keys:
        try:
            candidate.key.verify(sig, raw, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        matched = candidate
        break
    if matched is None:
        raise InvalidIdentity("signature does not verify with any trusted AWS key")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidIdentity(f"parse document: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidIdentity("parse document: not a JSON object")
    instance_id, account_id, region = (
        doc.get("instanceId"),
        doc.get("accountId"),
        doc.get("region"),
    )
    for name, value in (("instanceId", instance_id), ("accountId", account_id), ("region", region)):
        if not isinstance(value, str) or not value:
            raise InvalidIdentity(f"document has no {name}")
    assert isinstance(instance_id, str) and isinstance(account_id, str)
    assert isinstance(region, str)
    if not matched.covers(region):
        raise InvalidIdentity(
            f"document claims region {region!r} but is signed by the {matched.bucket!r} key"
        )
    if allowed_accounts and account_id not in allowed_accounts:
        raise InvalidIdentity(f"account {account_id!r} is not allowed")
    if allowed_regions and region not in allowed_regions:
        raise InvalidIdentity(f"region {region!r} is not allowed")
    return AwsIdentity(instance_id, account_id, region, matched.bucket)
