"""AWS EC2: the instance identity document and its signature from IMDS.

IMDSv2 first: ``PUT /latest/api/token`` with a TTL, then both GETs carry the token, which
is reused across exchanges until shortly before it expires. IMDSv1 (no token) is the
fallback when the PUT answers 403/404/405 or times out, as botocore does: the timeout is
what a container behind a hop limit of 1 sees. A 400 on the PUT is a hard error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import httpx
import structlog

from agent.identity.transport import body_text, describe, metadata_client, service_error
from agent.sdk.models import AWSInstanceIdentityToken

log = structlog.get_logger()

TOKEN_PATH: Final = "/latest/api/token"
DOCUMENT_PATH: Final = "/latest/dynamic/instance-identity/document"
SIGNATURE_PATH: Final = "/latest/dynamic/instance-identity/signature"
TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER: Final = "X-aws-ec2-metadata-token"
TOKEN_TTL_SECONDS: Final = 21600
# Renew a little early so a token never expires between the two GETs.
TOKEN_RENEW_MARGIN: Final = 60.0
V1_FALLBACK_STATUSES: Final = frozenset({403, 404, 405})
# After a fallback, go straight to IMDSv1 for this long: a PUT that timed out (container
# behind hop limit 1) would otherwise cost the full timeout on every reconnect.
V1_MEMORY_SECONDS: Final = 600.0
CLOUD: Final = "AWS"


class AwsIdentityFetcher:
    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 2.0,
        token_ttl: int = TOKEN_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.token_ttl = token_ttl
        self._clock = clock
        self._token = ""
        self._token_expires = 0.0
        self._v1_until = 0.0
        self.token_puts = 0  # how many tokens were requested (tests check reuse)

    async def fetch(self) -> AWSInstanceIdentityToken:
        async with metadata_client(self.timeout) as http:
            token = await self._session_token(http)
            try:
                return await self._identity(http, token)
            except _TokenRejected:
                # The cached token was revoked or outlived its TTL (IMDS restarted,
                # instance stopped and started): get a fresh one, once.
                self._token = ""
            token = await self._session_token(http)
            try:
                return await self._identity(http, token)
            except _TokenRejected:
                self._token = ""
                raise service_error(
                    CLOUD, "GET", self.endpoint + SIGNATURE_PATH, "401 even with a fresh token"
                ) from None

    async def _identity(self, http: httpx.AsyncClient, token: str) -> AWSInstanceIdentityToken:
        signature = await self._get(http, SIGNATURE_PATH, token)
        document = await self._get(http, DOCUMENT_PATH, token)
        return AWSInstanceIdentityToken(signature=signature, document=document)

    async def _session_token(self, http: httpx.AsyncClient) -> str:
        """An IMDSv2 token, or "" when only IMDSv1 answers."""
        if self._token and self._clock() < self._token_expires:
            return self._token
        if self._clock() < self._v1_until:
            return ""
        url = self.endpoint + TOKEN_PATH
        self.token_puts += 1
        try:
            response = await http.put(url, headers={TTL_HEADER: str(self.token_ttl)})
        except httpx.TimeoutException:
            log.info("identity.aws_imdsv1_fallback", reason="token request timed out")
            self._v1_until = self._clock() + V1_MEMORY_SECONDS
            return ""
        except httpx.HTTPError as exc:
            raise service_error(CLOUD, "PUT", url, describe(exc)) from exc
        if response.status_code in V1_FALLBACK_STATUSES:
            log.info("identity.aws_imdsv1_fallback", status=response.status_code)
            self._v1_until = self._clock() + V1_MEMORY_SECONDS
            return ""
        if response.status_code != 200:
            raise service_error(CLOUD, "PUT", url, f"status {response.status_code}")
        token = body_text(CLOUD, "PUT", url, response).strip()
        if not token or len(token) > 4096 or any(c.isspace() for c in token):
            raise service_error(CLOUD, "PUT", url, "answer is not an IMDSv2 token")
        self._token = token
        self._token_expires = self._clock() + self.token_ttl - TOKEN_RENEW_MARGIN
        return token

    async def _get(self, http: httpx.AsyncClient, path: str, token: str) -> str:
        url = self.endpoint + path
        headers = {TOKEN_HEADER: token} if token else {}
        try:
            response = await http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise service_error(CLOUD, "GET", url, describe(exc)) from exc
        if response.status_code == 401 and token:
            raise _TokenRejected
        if response.status_code == 401:
            self._v1_until = 0.0  # v1 is refused after all: ask for a token next time
            raise service_error(
                CLOUD,
                "GET",
                url,
                "401: IMDSv2 is required but no token could be obtained (in a container, "
                "raise the instance's metadata hop limit to 2)",
            )
        if response.status_code != 200:
            raise service_error(CLOUD, "GET", url, f"status {response.status_code}")
        text = body_text(CLOUD, "GET", url, response)
        if not text.strip():
            raise service_error(CLOUD, "GET", url, "empty body")
        return text


class _TokenRejected(Exception):
    """Internal: IMDS answered 401 to a request that carried our cached token."""
