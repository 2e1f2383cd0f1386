"""Test-made signing material that signs the way AWS, Google and Azure do.

Nothing here is a real cloud key: each test process generates its own RSA keys and
certificates with ``cryptography`` (cached per process, because key generation is the
slow part) and the control plane under test is configured to trust them.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import secrets
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

AZURE_TIME_FORMAT = "%m/%d/%y %H:%M:%S -0000"


@functools.cache
def rsa_key(slot: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """One key per ``slot`` per process: generation dominates the cost of these fixtures."""
    del slot
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wsagent tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_cert(
    subject_cn: str,
    key: rsa.RSAPrivateKey,
    *,
    issuer_cn: str | None = None,
    issuer_key: rsa.RSAPrivateKey | None = None,
    ca: bool = False,
    path_length: int | None = None,
    san: list[str] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    aia_url: str | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(_name(issuer_cn or subject_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if aia_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(aia_url),
                    )
                ]
            ),
            critical=False,
        )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------------------- AWS


@dataclass
class AwsMaterial:
    """An RSA key + self-signed cert standing in for a region's instance-identity key."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    instance_id: str = "i-0123456789abcdef0"
    account_id: str = "123456789012"
    region: str = "us-east-1"

    @property
    def cert_pem(self) -> str:
        return pem(self.cert)

    def document(self, **overrides: Any) -> str:
        """A realistic document, pretty-printed as IMDS serves it (the bytes are signed)."""
        doc: dict[str, Any] = {
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.region + "a",
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": "ami-0abcdef1234567890",
            "instanceId": self.instance_id,
            "instanceType": "m5.large",
            "kernelId": None,
            "pendingTime": "2026-01-01T00:00:00Z",
            "privateIp": "10.0.0.12",
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }
        doc.update(overrides)
        return json.dumps(doc, indent=2)

    def sign(self, document: str, key: rsa.RSAPrivateKey | None = None) -> str:
        """base64 of PKCS#1 v1.5 / SHA-256, wrapped at 64 columns like IMDS serves it."""
        raw = (key or self.key).sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())
        return "\n".join(textwrap.wrap(base64.b64encode(raw).decode(), 64))


def make_aws_material(slot: str = "aws", **kwargs: Any) -> AwsMaterial:
    key = rsa_key(slot)
    return AwsMaterial(key=key, cert=make_cert("ec2.amazonaws.test", key), **kwargs)


# ------------------------------------------------------------------------------- Google


@dataclass
class GoogleMaterial:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    kid: str = field(default_factory=lambda: secrets.token_hex(20))
    instance_id: str = "4567890123456789012"
    project_id: str = "wsagent-tests"
    project_number: int = 112233445566

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return {
            "keys": [
                {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                 "n": b64url(n), "e": b64url(e)}
            ]
        }  # fmt: skip

    def v1_certs(self) -> dict[str, str]:
        return {self.kid: pem(self.cert)}

    def claims(self, audience: str = "coder", now: float | None = None) -> dict[str, Any]:
        iat = int(now if now is not None else time.time())
        return {
            "aud": audience,
            "azp": "107000000000000000001",
            "email": "1234-compute@developer.gserviceaccount.com",
            "email_verified": True,
            "exp": iat + 3600,
            "google": {
                "compute_engine": {
                    "instance_creation_timestamp": iat - 600,
                    "instance_id": self.instance_id,
                    "instance_name": "ws-main",
                    "project_id": self.project_id,
                    "project_number": self.project_number,
                    "zone": "europe-west1-b",
                }
            },
            "iat": iat,
            "iss": "https://accounts.google.com",
            "sub": "107000000000000000001",
        }

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        alg: str = "RS256",
    ) -> str:
        header = {"alg": alg, "kid": kid or self.kid, "typ": "JWT"}
        body = claims if claims is not None else self.claims()
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(body).encode())
        )
        sig = (key or self.key).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(sig)


def make_google_material(slot: str = "google", **kwargs: Any) -> GoogleMaterial:
    key = rsa_key(slot)
    return GoogleMaterial(key=key, cert=make_cert("google-test-signer", key), **kwargs)


# ------------------------------------------------------------------------------- Azure


@dataclass
class AzureMaterial:
    """Test root CA -> intermediate -> leaf ``metadata.azure.com``, like Azure's chain."""

    root_key: rsa.RSAPrivateKey
    root: x509.Certificate
    inter_key: rsa.RSAPrivateKey
    intermediate: x509.Certificate
    leaf_key: rsa.RSAPrivateKey
    leaf: x509.Certificate
    vm_id: str = "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    subscription_id: str = "8d10da13-8125-4ba9-a717-bf7490507b3d"

    def content(
        self,
        nonce: str | None = None,
        *,
        created: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(hours=6),
        **overrides: Any,
    ) -> bytes:
        created = created or dt.datetime.now(dt.UTC)
        doc: dict[str, Any] = {
            "licenseType": "",
            "nonce": nonce if nonce is not None else created.strftime("%Y%m%d-%H%M%S"),
            "plan": {"name": "", "product": "", "publisher": ""},
            "sku": "22_04-lts-gen2",
            "subscriptionId": self.subscription_id,
            "timeStamp": {
                "createdOn": created.strftime(AZURE_TIME_FORMAT),
                "expiresOn": (created + lifetime).strftime(AZURE_TIME_FORMAT),
            },
            "vmId": self.vm_id,
        }
        doc.update(overrides)
        return json.dumps(doc, separators=(",", ":")).encode()

    def sign(
        self,
        content: bytes,
        *,
        attributes: bool = False,
        leaf: x509.Certificate | None = None,
        leaf_key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        """base64 DER PKCS#7 SignedData with the content attached and only the signer cert.

        Azure's documents carry no signed attributes; ``attributes=True`` makes the other
        shape (content digest inside signed attributes) that the verifier also handles.
        """
        options = [pkcs7.PKCS7Options.Binary]
        if not attributes:
            options.append(pkcs7.PKCS7Options.NoAttributes)
        der = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(content)
            .add_signer(leaf or self.leaf, leaf_key or self.leaf_key, hashes.SHA256())
            .sign(serialization.Encoding.DER, options)
        )
        return base64.b64encode(der).decode()

    def response(self, nonce: str | None = None, **kwargs: Any) -> dict[str, str]:
        return {"encoding": "pkcs7", "signature": self.sign(self.content(nonce, **kwargs))}


def make_azure_chain(
    prefix: str = "azure",
    *,
    leaf_cn: str = "metadata.azure.com",
    leaf_san: list[str] | None = None,
    **leaf_kwargs: Any,
) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    root_key, inter_key, leaf_key = (rsa_key(f"{prefix}-{n}") for n in ("root", "inter", "leaf"))
    root = make_cert(f"{prefix} test root", root_key, ca=True)
    inter = make_cert(
        f"{prefix} test issuing CA",
        inter_key,
        issuer_cn=f"{prefix} test root",
        issuer_key=root_key,
        ca=True,
        path_length=0,
    )
    san = leaf_san if leaf_san is not None else ["eastus.metadata.azure.com", leaf_cn]
    leaf = make_cert(
        leaf_cn,
        leaf_key,
        issuer_cn=f"{prefix} test issuing CA",
        issuer_key=inter_key,
        san=san,
        **leaf_kwargs,
    )
    return root, inter, leaf


def make_azure_material(prefix: str = "azure", **kwargs: Any) -> AzureMaterial:
    root, inter, leaf = make_azure_chain(prefix, **kwargs)
    return AzureMaterial(
        root_key=rsa_key(f"{prefix}-root"),
        root=root,
        inter_key=rsa_key(f"{prefix}-inter"),
        intermediate=inter,
        leaf_key=rsa_key(f"{prefix}-leaf"),
        leaf=leaf,
    )
