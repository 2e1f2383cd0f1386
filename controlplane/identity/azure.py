"""Azure: the attested document, a PKCS#7 SignedData with the JSON content attached.

Verified here, beyond what Coder checks (docs/operations.md, "Cloud identity"):
  1. exactly one signer, whose certificate is in the document;
  2. the CONTENT signature: over the content itself when there are no signed attributes
     (Azure's shape), or over the DER SET of signed attributes after checking that their
     messageDigest is the content's digest;
  3. the signer's name (SAN DNS names, else CN) is metadata.azure.com or a subdomain, or
     one of the sovereign clouds' equivalents;
  4. the chain: signer -> intermediates (from the document and configuration) -> a trusted
     root, each link's signature and validity period checked at ``now``;
  5. ``timeStamp``: not expired, not from the future, not older than ``max_age``;
  6. the nonce, when the caller expects one; then ``vmId`` and the subscription allow-list.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from controlplane.identity.errors import InvalidIdentity

SIGNER_NAME = re.compile(r"^(.*\.)?metadata\.(azure\.(com|us|cn)|microsoftazure\.de)$")
TIME_FORMAT = "%m/%d/%y %H:%M:%S %z"
MAX_CHAIN = 6
MAX_EMBEDDED_CERTIFICATES = 8  # Azure embeds one; chain building is quadratic in this
MAX_SIGNATURE_CHARS = 64 * 1024
# Azure puts the signature algorithm's OID where the digest algorithm belongs; accept both.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha1_rsa": hashes.SHA1,
    "sha256_rsa": hashes.SHA256,
    "sha384_rsa": hashes.SHA384,
    "sha512_rsa": hashes.SHA512,
    "1.2.840.113549.1.1.5": hashes.SHA1,
    "1.2.840.113549.1.1.11": hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
}
_RSA_SIGNATURES = frozenset(
    {"rsassa_pkcs1v15", "rsa", "sha1_rsa", "sha256_rsa", "sha384_rsa", "sha512_rsa"}
)


class ChainIncomplete(InvalidIdentity):
    """No known issuer for ``cert``: the caller may fetch it (AIA) and try again."""

    def __init__(self, detail: str, cert: x509.Certificate) -> None:
        super().__init__(detail)
        self.cert = cert


@dataclass(frozen=True, slots=True)
class AzureIdentity:
    vm_id: str
    subscription_id: str
    nonce: str
    created_on: dt.datetime
    expires_on: dt.datetime
    signer: str


@dataclass(frozen=True, slots=True)
class SignedContent:
    content: bytes
    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]


def _load_der(signature: str) -> bytes:
    if len(signature) > MAX_SIGNATURE_CHARS:
        raise InvalidIdentity("signature too large")
    try:
        return base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidIdentity(f"decode signature: {exc}") from exc


def _hash_for(name: str) -> hashes.HashAlgorithm:
    algorithm = _HASHES.get(name)
    if algorithm is None:
        raise InvalidIdentity(f"unsupported digest algorithm {name!r}")
    return algorithm()


def _digest(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def open_signed_data(signature: str) -> SignedContent:
    """Parse the PKCS#7 and verify the content signature with the embedded signer cert."""
    der = _load_der(signature)
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise InvalidIdentity(f"not PKCS#7 SignedData ({info['content_type'].native})")
        signed = info["content"]
        signer_infos = signed["signer_infos"]
        if len(signer_infos) != 1:
            raise InvalidIdentity(f"expected exactly one signer, found {len(signer_infos)}")
        signer_info = signer_infos[0]
        content = signed["encap_content_info"]["content"].native
        if not isinstance(content, bytes) or not content:
            raise InvalidIdentity("no attached content")
        embedded = [c for c in signed["certificates"] or [] if c.name == "certificate"]
        if len(embedded) > MAX_EMBEDDED_CERTIFICATES:
            raise InvalidIdentity(f"too many certificates ({len(embedded)})")
        certificates = tuple(x509.load_der_x509_certificate(c.chosen.dump()) for c in embedded)
        sid = signer_info["sid"]
        digest_name = signer_info["digest_algorithm"]["algorithm"].native
        sig_name = signer_info["signature_algorithm"]["algorithm"].native
        sig_value = signer_info["signature"].native
        signed_attrs = signer_info["signed_attrs"]
        attrs = signed_attrs.native if signed_attrs.contents else None
        attrs_der = signed_attrs.dump() if attrs else b""
    except InvalidIdentity:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidIdentity(f"malformed PKCS#7: {exc}") from exc
    signer = _find_signer(sid, certificates)
    algorithm = _hash_for(digest_name)
    if sig_name not in _RSA_SIGNATURES:
        raise InvalidIdentity(f"unsupported signature algorithm {sig_name!r}")
    if attrs:
        digests = [a["values"][0] for a in attrs if a["type"] == "message_digest"]
        if len(digests) != 1 or digests[0] != _digest(content, algorithm):
            raise InvalidIdentity("signed attributes' messageDigest does not match the content")
        types = [a["values"][0] for a in attrs if a["type"] == "content_type"]
        if types and types[0] != "data":
            raise InvalidIdentity(f"signed content type is {types[0]!r}, not data")
        # The signature covers the attributes re-tagged as a SET OF (RFC 5652 §5.4).
        signed_bytes = b"\x31" + attrs_der[1:]
    else:
        signed_bytes = content
    public = signer.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise InvalidIdentity("signer key is not RSA")
    try:
        public.verify(sig_value, signed_bytes, padding.PKCS1v15(), algorithm)
    except InvalidSignature as exc:
        raise InvalidIdentity("content signature does not verify") from exc
    return SignedContent(content, signer, certificates)


def _find_signer(sid: Any, certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    if sid.name == "issuer_and_serial_number":
        serial = sid.chosen["serial_number"].native
        issuer_der = sid.chosen["issuer"].dump()
        for cert in certificates:
            if cert.serial_number == serial and cert.issuer.public_bytes() == issuer_der:
                return cert
    elif sid.name == "subject_key_identifier":
        ski = sid.chosen.native
        for cert in certificates:
            try:
                ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ext.value.digest == ski:
                return cert
    raise InvalidIdentity("the signer's certificate is not in the document")


def signer_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if names:
        return [n.lower() for n in names]
    return [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def check_signer_name(cert: x509.Certificate) -> str:
    names = signer_names(cert)
    for name in names:
        if SIGNER_NAME.match(name):
            return name
    raise InvalidIdentity(f"signer {names or ['(no name)']} is not an Azure metadata service")


def aia_issuer_urls(cert: x509.Certificate) -> list[str]:
    """The "CA Issuers" URLs of the Authority Information Access extension."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    except x509.ExtensionNotFound:
        return []
    return [
        d.access_location.value
        for d in aia.value
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
) -> list[x509.Certificate]:
    """Walk leaf -> ... -> a trusted root; every certificate valid at ``now``."""
    if not _valid_at(leaf, now):
        raise InvalidIdentity("signer certificate is outside its validity period")
    chain = [leaf]
    current = leaf
    for _ in range(MAX_CHAIN):
        for root in roots:
            if root.subject == current.issuer and _issued_by(current, root):
                if not _valid_at(root, now):
                    raise InvalidIdentity("trusted root is outside its validity period")
                return [*chain, root]
        candidates = [
            c
            for c in intermediates
            if c.subject == current.issuer and c not in chain and _issued_by(current, c)
        ]
        # Several certificates share a name (a CA and its cross-signed or expired
        # re-issues): prefer one valid now, then one issued by a trusted root.
        candidates.sort(
            key=lambda c: (
                not _valid_at(c, now),
                not any(r.subject == c.issuer for r in roots),
            )
        )
        issuer = candidates[0] if candidates else None
        if issuer is None:
            raise ChainIncomplete(
                f"no trusted chain: issuer {current.issuer.rfc4514_string()!r} of "
                f"{current.subject.rfc4514_string()!r} is not a trusted root or known intermediate",
                current,
            )
        if not _is_ca(issuer):
            raise InvalidIdentity(f"{issuer.subject.rfc4514_string()!r} is not a CA")
        if not _valid_at(issuer, now):
            raise InvalidIdentity(
                f"intermediate {issuer.subject.rfc4514_string()!r} is outside its validity period"
            )
        chain.append(issuer)
        current = issuer
    raise InvalidIdentity("certificate chain too long")


def _parse_time(value: object, name: str) -> dt.datetime:
    if not isinstance(value, str):
        raise InvalidIdentity(f"timeStamp.{name} missing")
    try:
        return dt.datetime.strptime(value, TIME_FORMAT).astimezone(dt.UTC)
    except ValueError as exc:
        raise InvalidIdentity(f"timeStamp.{name} {value!r}: {exc}") from exc


def verify_azure(
    signature: str,
    *,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    now: dt.datetime,
    max_age: float = 3600.0,
    leeway: float = 60.0,
    expected_nonce: str | None = None,
    allowed_subscriptions: frozenset[str] = frozenset(),
) -> AzureIdentity:
    signed = open_signed_data(signature)
    signer_name = check_signer_name(signed.signer)
    verify_chain(signed.signer, [*signed.certificates, *intermediates], roots, now)
    try:
        doc = json.loads(signed.content)
    except ValueError as exc:
        raise InvalidIdentity(f"content is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidIdentity("content is not a JSON object")
    stamp = doc.get("timeStamp")
    stamp = stamp if isinstance(stamp, dict) else {}
    created = _parse_time(stamp.get("createdOn"), "createdOn")
    expires = _parse_time(stamp.get("expiresOn"), "expiresOn")
    skew = dt.timedelta(seconds=leeway)
    if expires + skew < now:
        raise InvalidIdentity(f"document expired at {expires.isoformat()}")
    if created - skew > now:
        raise InvalidIdentity(f"document created in the future ({created.isoformat()})")
    age = (now - created).total_seconds()
    if age > max_age:
        raise InvalidIdentity(f"stale timeStamp: created {int(age)} s ago (limit {int(max_age)})")
    nonce = doc.get("nonce")
    nonce = nonce if isinstance(nonce, str) else ""
    if expected_nonce is not None and nonce != expected_nonce:
        raise InvalidIdentity("nonce mismatch")
    vm_id = doc.get("vmId")
    if not isinstance(vm_id, str) or not vm_id:
        raise InvalidIdentity("document has no vmId")
    subscription = doc.get("subscriptionId")
    subscription = subscription if isinstance(subscription, str) else ""
    if allowed_subscriptions and subscription not in allowed_subscriptions:
        raise InvalidIdentity(f"subscription {subscription!r} is not allowed")
    return AzureIdentity(vm_id, subscription, nonce, created, expires, signer_name)
