"""Google's token-signing keys: fetched from a URL and cached, or read from a file.

Both published formats are understood: the JWKS of ``oauth2/v3/certs`` (``n``/``e``) and
the ``{kid: PEM certificate}`` map of ``oauth2/v1/certs``. Keys rotate, so the cache lives
for the ``Cache-Control: max-age`` Google sends, and an unknown ``kid`` triggers one early
refresh (rate-limited, so garbage tokens cannot make us hammer Google). Air-gapped
installs point ``--google-keys-file`` at a saved copy instead.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

log = structlog.get_logger()

DEFAULT_KEYS_URL = "https://www.googleapis.com/oauth2/v3/certs"
DEFAULT_TTL = 3600.0
MIN_REFRESH_INTERVAL = 30.0
MAX_KEYS_BYTES = 1 << 20
_MAX_AGE = re.compile(r"max-age=(\d+)")


class KeySourceError(Exception):
    """Google's keys could not be loaded (network, file or format)."""


def _b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def parse_keys(data: bytes) -> dict[str, rsa.RSAPublicKey]:
    """JWKS (``{"keys": [...]}``) or a v1 map ``{kid: PEM}``; RSA keys only."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KeySourceError(f"keys are not JSON: {exc}") from exc
    keys: dict[str, rsa.RSAPublicKey] = {}
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        for jwk in doc["keys"]:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
                continue
            try:
                numbers = rsa.RSAPublicNumbers(_b64url_int(jwk["e"]), _b64url_int(jwk["n"]))
                keys[str(jwk["kid"])] = numbers.public_key()
            except (KeyError, ValueError, TypeError) as exc:
                raise KeySourceError(f"bad JWK: {exc}") from exc
        return keys
    if not isinstance(doc, dict):
        raise KeySourceError("keys must be a JWKS or a {kid: PEM} object")
    for kid, pem in doc.items():
        if not isinstance(pem, str):
            raise KeySourceError(f"key {kid!r} is not a PEM string")
        try:
            public: object = (
                x509.load_pem_x509_certificate(pem.encode()).public_key()
                if "CERTIFICATE" in pem
                else serialization.load_pem_public_key(pem.encode())
            )
        except ValueError as exc:
            raise KeySourceError(f"key {kid!r}: {exc}") from exc
        if isinstance(public, rsa.RSAPublicKey):
            keys[kid] = public
    return keys


class GoogleKeySource:
    def __init__(
        self,
        url: str = DEFAULT_KEYS_URL,
        *,
        file: Path | None = None,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.file = file
        self.timeout = timeout
        self._clock = clock
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._expires = 0.0
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def keys(self, kid: str = "") -> dict[str, rsa.RSAPublicKey]:
        """The current keys; refreshed when stale, or early when ``kid`` is unknown.

        Refreshes are at most one per MIN_REFRESH_INTERVAL once keys are loaded, so
        neither tokens with invented key ids nor an unreachable URL turn every request
        into a download; until then the last good keys stay in use.
        """
        async with self._lock:
            now = self._clock()
            due = now >= self._expires or (bool(kid) and kid not in self._keys)
            throttled = bool(self._keys) and now - self._fetched_at < MIN_REFRESH_INTERVAL
            if due and not throttled:
                try:
                    await self._refresh()
                except KeySourceError as exc:
                    if not self._keys:
                        raise
                    # Google keeps a rotated-out key published for days: the last good
                    # set is far better than refusing every agent while the URL is down.
                    log.warning("identity.google_keys_stale", error=str(exc))
        return self._keys

    async def _refresh(self) -> None:
        self.fetches += 1
        self._fetched_at = self._clock()
        if self.file is not None:
            try:
                data = self.file.read_bytes()
            except OSError as exc:
                raise KeySourceError(f"read {self.file}: {exc}") from exc
            self._keys = parse_keys(data)
            self._expires = self._clock() + DEFAULT_TTL
            return
        data, max_age = await self._download()
        self._keys = parse_keys(data)
        self._expires = self._clock() + (max_age if max_age is not None else DEFAULT_TTL)
        log.info("identity.google_keys_fetched", url=self.url, keys=len(self._keys))

    async def _download(self) -> tuple[bytes, float | None]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    raise KeySourceError(f"GET {self.url}: status {response.status}")
                data = await response.content.read(MAX_KEYS_BYTES + 1)
                cache = response.headers.get("Cache-Control", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KeySourceError(f"GET {self.url}: {exc or type(exc).__name__}") from exc
        if len(data) > MAX_KEYS_BYTES:
            raise KeySourceError(f"GET {self.url}: keys larger than {MAX_KEYS_BYTES} bytes")
        match = _MAX_AGE.search(cache)
        return data, float(match.group(1)) if match else None
