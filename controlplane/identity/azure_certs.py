"""The issuing and root certificates Azure's attested-data signers chain to, shipped.

The attested document carries only the signer's certificate. Without its issuers at hand
the server must fetch them from the AIA URL in the certificate, which fails offline or
behind an egress proxy. So the published intermediates (the Microsoft Azure RSA/ECC TLS
Issuing CAs, the Microsoft TLS G2 RSA CA OCSP series, the cross-signed Microsoft TLS RSA
Root G2, the older Azure TLS Issuing and Microsoft RSA TLS CAs) and the DigiCert and
Baltimore roots above them travel with the server in ``controlplane/data/azure-ca-certs.pem``.

They are used only as *known intermediates*: a chain must still end in a trusted root
(the system store or ``--azure-root``), so shipping a certificate can make a document
verify without a download, never make an untrusted one verify. Microsoft rotates these
CAs; when a new one appears, the AIA fetch still finds it.
"""

from __future__ import annotations

import functools
from importlib import resources

from cryptography import x509

BUNDLE = "azure-ca-certs.pem"


@functools.cache
def shipped_azure_certificates() -> tuple[x509.Certificate, ...]:
    data = resources.files("controlplane").joinpath("data", BUNDLE).read_bytes()
    return tuple(x509.load_pem_x509_certificates(data))
