"""The verifiers with their trust material, built once per control plane from its config.

Holds what is expensive or stateful: the parsed AWS keys, Google's key cache, Azure's
roots (the system trust store is read on first use only) and the Azure nonces this server
issued. The HTTP layer (``controlplane.routes_identity``) only maps results to responses.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import ssl
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from controlplane.identity.aia import AiaFetcher
from controlplane.identity.aws import AwsIdentity, load_keys, verify_aws
from controlplane.identity.azure import (
    AzureIdentity,
    ChainIncomplete,
    aia_issuer_urls,
    verify_azure,
)
from controlplane.identity.azure_certs import shipped_azure_certificates
from controlplane.identity.config import IdentityConfig
from controlplane.identity.errors import InvalidIdentity
from controlplane.identity.google import GoogleIdentity, parse_jwt, verify_google
from controlplane.identity.google_keys import GoogleKeySource

log = structlog.get_logger()

MAX_OUTSTANDING_NONCES = 10_000
MAX_AIA_ROUNDS = 2  # signer -> issuing CA -> (rarely) one more intermediate


class NonceStore:
    """Single-use Azure nonces with a lifetime; the oldest are dropped past a cap, because
    issuing them needs no credentials."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._issued: OrderedDict[str, float] = OrderedDict()

    def issue(self) -> str:
        self._expire()
        while True:
            nonce = f"{secrets.randbelow(10**10):010d}"
            if nonce not in self._issued:
                break
        self._issued[nonce] = self._clock() + self.ttl
        while len(self._issued) > MAX_OUTSTANDING_NONCES:
            self._issued.popitem(last=False)
        return nonce

    def consume(self, nonce: str) -> bool:
        self._expire()
        return self._issued.pop(nonce, None) is not None

    def _expire(self) -> None:
        now = self._clock()
        while self._issued:
            nonce, expires = next(iter(self._issued.items()))
            if expires > now:
                break
            del self._issued[nonce]


def _load_bundle(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle that parses; one odd system root (a negative
    serial, say) must not take the others down with it."""
    certs = []
    for block in re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return certs


def system_roots() -> list[x509.Certificate]:
    """The system trust store, read the way OpenSSL finds it (file, then directory)."""
    paths = ssl.get_default_verify_paths()
    for cafile in (paths.cafile, paths.openssl_cafile):
        if cafile and Path(cafile).is_file():
            return _load_bundle(Path(cafile).read_bytes())
    certs: list[x509.Certificate] = []
    capath = paths.capath or paths.openssl_capath
    if capath and Path(capath).is_dir():
        for entry in sorted(Path(capath).iterdir()):
            try:
                certs.extend(_load_bundle(entry.read_bytes()))
            except OSError:
                continue
    return certs


def _pems(texts: tuple[str, ...]) -> list[x509.Certificate]:
    return [c for text in texts for c in x509.load_pem_x509_certificates(text.encode())]


class IdentityService:
    def __init__(
        self,
        config: IdentityConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self.aws_keys = load_keys(config.aws_extra_certs, include_defaults=config.aws_default_certs)
        self.google_keys = GoogleKeySource(config.google_keys_url, file=config.google_keys_file)
        self._azure_roots: list[x509.Certificate] | None = _pems(config.azure_roots) or None
        self.azure_intermediates = [
            *_pems(config.azure_intermediates),
            *shipped_azure_certificates(),
        ]
        self.nonces = NonceStore(config.azure_nonce_ttl)
        self.aia = AiaFetcher(config.azure_aia_hosts)

    @property
    def azure_roots(self) -> list[x509.Certificate]:
        if self._azure_roots is None:
            self._azure_roots = system_roots()
            log.info("identity.azure_system_roots_loaded", count=len(self._azure_roots))
        return self._azure_roots

    def aws(self, document: str, signature: str) -> AwsIdentity:
        c = self.config
        return verify_aws(
            document,
            signature,
            self.aws_keys,
            allowed_accounts=c.aws_allowed_accounts,
            allowed_regions=c.aws_allowed_regions,
        )

    async def google(self, token: str) -> GoogleIdentity:
        """Raises KeySourceError when Google's keys cannot be loaded (not the agent's fault)."""
        kid = parse_jwt(token).kid
        keys = await self.google_keys.keys(kid)
        c = self.config
        return verify_google(
            token,
            keys,
            audience=c.google_audience,
            now=self._clock(),
            leeway=c.google_leeway,
            allowed_projects=c.google_allowed_projects,
        )

    async def azure(self, signature: str) -> AzureIdentity:
        c = self.config
        fetched: list[x509.Certificate] = []
        for round_ in range(MAX_AIA_ROUNDS + 1):
            try:
                identity = verify_azure(
                    signature,
                    roots=self.azure_roots,
                    intermediates=[*self.azure_intermediates, *fetched],
                    now=dt.datetime.fromtimestamp(self._clock(), dt.UTC),
                    max_age=c.azure_max_age,
                    allowed_subscriptions=c.azure_allowed_subscriptions,
                )
                break
            except ChainIncomplete as exc:
                new = [] if round_ == MAX_AIA_ROUNDS else await self._aia(exc.cert, fetched)
                if not new:
                    raise
                fetched.extend(new)
        # A nonce we issued is single-use whether or not nonces are required.
        issued = bool(identity.nonce) and self.nonces.consume(identity.nonce)
        if c.azure_require_nonce and not issued:
            raise InvalidIdentity(
                "nonce mismatch: the document's nonce was not issued by this server, "
                "was already used, or has expired"
            )
        return identity

    async def _aia(
        self, cert: x509.Certificate, known: list[x509.Certificate]
    ) -> list[x509.Certificate]:
        found: list[x509.Certificate] = []
        for url in aia_issuer_urls(cert):
            found.extend(c for c in await self.aia.issuers(url) if c not in known)
        return found
