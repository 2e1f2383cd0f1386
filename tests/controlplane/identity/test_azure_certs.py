"""The Azure issuing and root certificates shipped with the server: each one genuine (its
signature checks against its issuer), the set complete, and used to build chains offline."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning

from controlplane.identity.aia import DEFAULT_AIA_HOSTS
from controlplane.identity.azure import ChainIncomplete, verify_chain
from controlplane.identity.azure_certs import shipped_azure_certificates
from controlplane.identity.config import IdentityConfig
from controlplane.identity.service import IdentityService
from tests.fakes.cloudkeys import make_cert, rsa_key

SHIPPED = shipped_azure_certificates()
DATA = Path(__file__).parent / "data"


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def _mozilla_roots() -> list[x509.Certificate]:
    with open(certifi.where(), "rb") as f, warnings.catch_warnings():
        # One unrelated root in the bundle has a negative serial number.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_pem_x509_certificates(f.read())


def _issuers() -> list[x509.Certificate]:
    """Where issuers are looked up: the shipped set plus Mozilla's roots (certifi), which
    hold the Microsoft RSA Root Certificate Authority 2017 that signed the cross-signs."""
    return [*SHIPPED, *_mozilla_roots()]


def _verify_signature(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    key = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    if isinstance(key, rsa.RSAPublicKey) and isinstance(algorithm, hashes.SHA1):
        # Baltimore's self-signature is SHA-1, which verify_directly_issued_by refuses.
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        return
    cert.verify_directly_issued_by(issuer)


@pytest.mark.parametrize("cert", SHIPPED, ids=lambda c: f"{_cn(c.subject)}<-{_cn(c.issuer)}")
def test_every_shipped_certificate_verifies_against_its_issuer(cert: x509.Certificate) -> None:
    issuers = [c for c in _issuers() if c.subject == cert.issuer]
    assert issuers, f"no issuer for {cert.subject.rfc4514_string()}"
    errors = []
    for issuer in issuers:
        try:
            _verify_signature(cert, issuer)
            return
        except (ValueError, TypeError, InvalidSignature) as exc:
            errors.append(repr(exc))
    raise AssertionError(f"no issuer's key verifies {cert.subject.rfc4514_string()}: {errors}")


def test_the_listed_certificates_are_all_there() -> None:
    names = {_cn(c.subject) for c in SHIPPED}
    expected = {
        *(f"Microsoft Azure TLS Issuing CA {n}" for n in ("01", "02", "05", "06")),
        "Microsoft RSA TLS CA 01",
        "Microsoft RSA TLS CA 02",
        *(
            f"Microsoft Azure {k} TLS Issuing CA {n}"
            for k in ("RSA", "ECC")
            for n in ("03", "04", "07", "08")
        ),
        *(f"Microsoft TLS G2 RSA CA OCSP {n:02d}" for n in range(2, 17, 2)),
        "Microsoft TLS RSA Root G2",
        "DigiCert Global Root G2",
        "DigiCert Global Root G3",
        "Baltimore CyberTrust Root",
    }
    assert names == expected
    # The Root G2 shipped is the one cross-signed by DigiCert, not the self-signed root.
    (root_g2,) = [c for c in SHIPPED if _cn(c.subject) == "Microsoft TLS RSA Root G2"]
    assert _cn(root_g2.issuer) == "DigiCert Global Root G2"
    assert len({c.fingerprint(hashes.SHA256()) for c in SHIPPED}) == len(SHIPPED)


def test_caissuers_microsoft_com_is_an_allowed_aia_host() -> None:
    assert "caissuers.microsoft.com" in DEFAULT_AIA_HOSTS


def _by_cn(name: str, issuer: str = "") -> x509.Certificate:
    return next(
        c for c in SHIPPED if _cn(c.subject) == name and (not issuer or _cn(c.issuer) == issuer)
    )


def test_a_current_signer_ca_chains_to_digicert_offline() -> None:
    """OCSP 02 -> cross-signed Root G2 -> DigiCert Global Root G2, from shipped files alone."""
    root = _by_cn("DigiCert Global Root G2")
    leaf_ca = _by_cn("Microsoft TLS G2 RSA CA OCSP 02")
    chain = verify_chain(leaf_ca, SHIPPED, [root], dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert [_cn(c.subject) for c in chain] == [
        "Microsoft TLS G2 RSA CA OCSP 02",
        "Microsoft TLS RSA Root G2",
        "DigiCert Global Root G2",
    ]


@pytest.mark.parametrize("expired_first", [True, False])
def test_the_chain_takes_the_reissue_that_is_valid_now(expired_first: bool) -> None:
    """Microsoft publishes one CA name several times (expired issues, cross-signs). The
    chain walk must take the issue that is valid now, whatever the list order."""
    now = dt.datetime.now(dt.UTC)
    root_key, ca_key, leaf_key = (rsa_key(f"reissue-{n}") for n in ("root", "ca", "leaf"))
    root = make_cert("reissue root", root_key, ca=True)

    def issue(not_after: dt.datetime) -> x509.Certificate:
        return make_cert(
            "reissue issuing CA",
            ca_key,
            issuer_cn="reissue root",
            issuer_key=root_key,
            ca=True,
            not_before=now - dt.timedelta(days=400),
            not_after=not_after,
        )

    expired, current = issue(now - dt.timedelta(days=1)), issue(now + dt.timedelta(days=30))
    leaf = make_cert(
        "metadata.azure.com", leaf_key, issuer_cn="reissue issuing CA", issuer_key=ca_key
    )
    known = [expired, current] if expired_first else [current, expired]
    assert verify_chain(leaf, known, [root], now)[1] == current


# An attested document captured from a real Azure VM in eastus on 2026-06-25 (public test
# data in Coder's repository, coderd/azureidentity): signed by metadata.azure.com under
# Microsoft TLS G2 RSA CA OCSP 02 -> Microsoft TLS RSA Root G2 -> DigiCert Global Root G2.
REAL_DOCUMENT = (DATA / "azure-attested-eastus-2026-06-25.b64").read_text().strip()
REAL_VM_ID = "dc18de58-292f-4794-9a5d-a4192bad0039"


async def test_a_real_document_verifies_offline_with_the_shipped_certificates() -> None:
    """No AIA host allowed (offline, or an egress proxy in the way): the shipped
    intermediates alone complete the chain to the DigiCert root."""
    root = _by_cn("DigiCert Global Root G2")
    created = dt.datetime(2026, 6, 25, 18, 56, 45, tzinfo=dt.UTC)
    service = IdentityService(
        IdentityConfig(
            azure_roots=(root.public_bytes(serialization.Encoding.PEM).decode(),),
            azure_aia_hosts=frozenset(),
        ),
        clock=lambda: created.timestamp() + 60,
    )
    identity = await service.azure(REAL_DOCUMENT)
    assert identity.vm_id == REAL_VM_ID
    assert identity.signer == "eastus.metadata.azure.com"
    # Without the shipped certificates the same document cannot be verified offline.
    service.azure_intermediates = []
    with pytest.raises(ChainIncomplete):
        await service.azure(REAL_DOCUMENT)
