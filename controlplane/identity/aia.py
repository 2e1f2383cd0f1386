"""Fetch an Azure signer's issuing CA from its AIA "CA Issuers" URL, carefully.

Azure documents carry only the signer certificate, and Microsoft rotates the issuing CAs
without notice and advises against pinning them; a fixed bundle goes stale (Coder's
hard-coded set expires 2026-08-25). So, like Coder, the server may fetch the issuer named
in the signer's AIA extension, but only from allow-listed hosts (Microsoft's and
DigiCert's by default) on their default ports, with a short timeout, a size cap and no
redirects. The fetched certificate is only ever an intermediate: trust still has to end
in a configured root, so a bad download can make verification fail, never succeed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import structlog
from cryptography import x509

log = structlog.get_logger()

# caissuers.microsoft.com: the second AIA location in the Microsoft TLS G2 RSA CA OCSP
# signers' certificates (www.microsoft.com is the first).
DEFAULT_AIA_HOSTS = frozenset(
    {"www.microsoft.com", "caissuers.microsoft.com", "cacerts.digicert.com"}
)
MAX_BYTES = 1 << 20
CACHE_SIZE = 64
CACHE_TTL = 24 * 3600.0
FAILURE_TTL = 60.0  # a failed URL is not retried sooner, so bad tokens cannot make us hammer


def allowed(url: str, hosts: frozenset[str]) -> bool:
    """``host`` entries allow the scheme's default port; ``host:port`` entries that port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return False
    if port is None or port == {"http": 80, "https": 443}[parts.scheme]:
        return host in hosts
    return f"{host}:{port}" in hosts


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


class AiaFetcher:
    def __init__(
        self,
        hosts: frozenset[str] = DEFAULT_AIA_HOSTS,
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts = frozenset(h.lower() for h in hosts)
        self.timeout = timeout
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, list[x509.Certificate]]] = OrderedDict()
        self.downloads = 0

    async def issuers(self, url: str) -> list[x509.Certificate]:
        """Certificates at ``url`` ([] when not allowed or not fetchable)."""
        if not allowed(url, self.hosts):
            log.info("identity.aia_refused", url=url)
            return []
        cached = self._cache.get(url)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        certs = await self._download(url)
        self._cache[url] = (self._clock() + (CACHE_TTL if certs else FAILURE_TTL), certs)
        self._cache.move_to_end(url)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return certs

    async def _download(self, url: str) -> list[x509.Certificate]:
        self.downloads += 1
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as s,
                s.get(url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    log.warning("identity.aia_failed", url=url, status=response.status)
                    return []
                data = await response.content.read(MAX_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("identity.aia_failed", url=url, error=str(exc) or type(exc).__name__)
            return []
        if len(data) > MAX_BYTES:
            log.warning("identity.aia_failed", url=url, error="too large")
            return []
        try:
            certs = parse_certificates(data)
        except ValueError as exc:
            log.warning("identity.aia_failed", url=url, error=f"not a certificate: {exc}")
            return []
        log.info("identity.aia_fetched", url=url, certificates=len(certs))
        return certs
