"""The token exchange for instance-identity auth: fetch the proof, post it, keep the token.

An :class:`IdentityExchange` is the agent's ``TokenExchange``: the run loop calls it at the
start of every connection attempt, so after any failure (a 401 included: a revoked token
fails the attempt) the next attempt proves the identity again. ``auto`` resolves the cloud
once, on the first call, then behaves like the explicit method; finding no cloud is a
configuration error (exit code 2), not something a retry can fix.

The control-plane client is passed in as anything with the three ``auth_*`` methods, so
this component does not import the client module.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from agent.config import AUTH_AUTO, AUTH_AWS, AUTH_AZURE, AUTH_GOOGLE, AgentConfig
from agent.errors import ConfigError, IdentityError, NoCloudDetected
from agent.identity.aws import AwsIdentityFetcher
from agent.identity.azure import AzureIdentityFetcher
from agent.identity.detect import ProbeTargets, detect, read_dmi
from agent.identity.gcp import GoogleIdentityFetcher
from agent.sdk.models import (
    AuthenticateResponse,
    AWSInstanceIdentityToken,
    AzureInstanceIdentityToken,
    GoogleInstanceIdentityToken,
)

log = structlog.get_logger()

NonceSource = Callable[[], Awaitable[str | None]]


class IdentityPoster(Protocol):
    async def auth_aws(self, token: AWSInstanceIdentityToken) -> AuthenticateResponse: ...

    async def auth_azure(self, token: AzureInstanceIdentityToken) -> AuthenticateResponse: ...

    async def auth_google(self, token: GoogleInstanceIdentityToken) -> AuthenticateResponse: ...


class IdentityExchange:
    def __init__(
        self,
        config: AgentConfig,
        poster: IdentityPoster,
        *,
        nonce_source: NonceSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.auth not in (AUTH_AUTO, AUTH_AWS, AUTH_AZURE, AUTH_GOOGLE):
            raise IdentityError(f"{config.auth!r} is not an instance-identity method")
        self.config = config
        self.method: str | None = None if config.auth == AUTH_AUTO else config.auth
        self._poster = poster
        self._nonce_source = nonce_source
        # Kept across exchanges: the AWS fetcher reuses its IMDSv2 token until it expires.
        self._aws = AwsIdentityFetcher(
            config.aws_metadata_endpoint, timeout=config.metadata_timeout, clock=clock
        )
        self._google = GoogleIdentityFetcher(
            config.gce_metadata_host,
            audience=config.google_audience,
            timeout=config.metadata_timeout,
        )
        self._azure = AzureIdentityFetcher(
            config.azure_imds_endpoint, timeout=config.metadata_timeout
        )

    async def resolve(self) -> str:
        """The method to use; for ``auto``, detected once (DMI, then a probe)."""
        if self.method is None:
            facts = read_dmi(
                self.config.dmi_dir, self.config.hypervisor_uuid_path, self.config.cloud_id_path
            )
            targets = ProbeTargets(
                aws_endpoint=self.config.aws_metadata_endpoint,
                gce_host=self.config.gce_metadata_host,
                azure_endpoint=self.config.azure_imds_endpoint,
                timeout=self.config.metadata_timeout,
                aws_disabled=self.config.aws_metadata_disabled,
            )
            try:
                self.method = await detect(facts, targets)
            except NoCloudDetected as exc:
                raise ConfigError("CODER_AGENT_AUTH", f"auto: {exc}") from exc
        return self.method

    async def __call__(self) -> str:
        method = await self.resolve()
        if method == AUTH_AWS:
            response = await self._poster.auth_aws(await self._aws.fetch())
        elif method == AUTH_GOOGLE:
            response = await self._poster.auth_google(await self._google.fetch())
        else:
            nonce = await self._nonce_source() if self._nonce_source is not None else None
            response = await self._poster.auth_azure(await self._azure.fetch(nonce))
        log.info("identity.exchanged", method=method)
        return response.session_token
