"""IdentityExchange: resolve the method, fetch from the fake metadata service, post."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import AUTH_AUTO, AUTH_AWS, AUTH_AZURE, AUTH_GOOGLE, AgentConfig
from agent.errors import ConfigError
from agent.identity.exchange import IdentityExchange
from agent.sdk.models import (
    AuthenticateResponse,
    AWSInstanceIdentityToken,
    AzureInstanceIdentityToken,
    GoogleInstanceIdentityToken,
)
from tests.fakes.metadata import FakeMetadata

pytestmark = pytest.mark.e2e


class RecordingPoster:
    """Stands in for the control-plane client: records what would be posted."""

    def __init__(self) -> None:
        self.posted: list[object] = []

    async def _answer(self, token: object) -> AuthenticateResponse:
        self.posted.append(token)
        return AuthenticateResponse(session_token=f"session-{len(self.posted)}")

    async def auth_aws(self, token: AWSInstanceIdentityToken) -> AuthenticateResponse:
        return await self._answer(token)

    async def auth_azure(self, token: AzureInstanceIdentityToken) -> AuthenticateResponse:
        return await self._answer(token)

    async def auth_google(self, token: GoogleInstanceIdentityToken) -> AuthenticateResponse:
        return await self._answer(token)


def _config(fake: FakeMetadata, tmp_path: Path, auth: str) -> AgentConfig:
    return AgentConfig(
        url="http://127.0.0.1:1",
        auth=auth,
        token="",
        log_dir=tmp_path,
        dmi_dir=tmp_path / "dmi",
        hypervisor_uuid_path=tmp_path / "dmi" / "hypervisor-uuid",
        aws_metadata_endpoint=fake.url,
        gce_metadata_host=fake.host,
        azure_imds_endpoint=fake.url,
        metadata_timeout=0.5,
    )


@pytest.mark.parametrize(
    ("auth", "kind"),
    [
        (AUTH_AWS, AWSInstanceIdentityToken),
        (AUTH_GOOGLE, GoogleInstanceIdentityToken),
        (AUTH_AZURE, AzureInstanceIdentityToken),
    ],
)
async def test_explicit_method_fetches_and_posts(
    fake_metadata: FakeMetadata, tmp_path: Path, auth: str, kind: type
) -> None:
    """An explicit method never probes; each call fetches afresh and posts."""
    poster = RecordingPoster()
    exchange = IdentityExchange(_config(fake_metadata, tmp_path, auth), poster)
    assert await exchange() == "session-1"
    assert await exchange() == "session-2"
    assert [type(p) for p in poster.posted] == [kind, kind]
    assert not [r for r in fake_metadata.requests if r.path in ("/", "/metadata/versions")]


async def test_auto_detects_from_dmi_once(fake_metadata: FakeMetadata, tmp_path: Path) -> None:
    """auto reads DMI on the first call, then sticks to that method."""
    dmi = tmp_path / "dmi"
    dmi.mkdir()
    (dmi / "product_name").write_text("Google Compute Engine\n")
    poster = RecordingPoster()
    exchange = IdentityExchange(_config(fake_metadata, tmp_path, AUTH_AUTO), poster)
    await exchange()
    (dmi / "product_name").write_text("Something else\n")
    await exchange()
    assert exchange.method == AUTH_GOOGLE
    assert all(isinstance(p, GoogleInstanceIdentityToken) for p in poster.posted)


async def test_auto_without_dmi_uses_the_probe(fake_metadata: FakeMetadata, tmp_path: Path) -> None:
    fake_metadata.clouds = frozenset({"azure"})
    exchange = IdentityExchange(_config(fake_metadata, tmp_path, AUTH_AUTO), RecordingPoster())
    await exchange()
    assert exchange.method == AUTH_AZURE


async def test_auto_with_no_cloud_is_a_config_error(
    fake_metadata: FakeMetadata, tmp_path: Path
) -> None:
    """Nothing to detect: a ConfigError naming CODER_AGENT_AUTH (the CLI exits 2)."""
    fake_metadata.clouds = frozenset()
    exchange = IdentityExchange(_config(fake_metadata, tmp_path, AUTH_AUTO), RecordingPoster())
    with pytest.raises(ConfigError) as info:
        await exchange()
    assert info.value.setting == "CODER_AGENT_AUTH"


async def test_azure_nonce_source_is_used(fake_metadata: FakeMetadata, tmp_path: Path) -> None:
    async def nonce() -> str:
        return "4242424242"

    exchange = IdentityExchange(
        _config(fake_metadata, tmp_path, AUTH_AZURE), RecordingPoster(), nonce_source=nonce
    )
    await exchange()
    (req,) = fake_metadata.seen("/metadata/attested/document")
    assert req.query["nonce"] == ["4242424242"]


def test_token_auth_is_not_an_identity_method(fake_metadata: FakeMetadata, tmp_path: Path) -> None:
    config = replace(_config(fake_metadata, tmp_path, AUTH_AWS), auth="token")
    with pytest.raises(Exception, match="not an instance-identity method"):
        IdentityExchange(config, RecordingPoster())


@pytest.mark.parametrize(("auth", "wired"), [("token", False), (AUTH_AUTO, True), (AUTH_AWS, True)])
async def test_wiring_installs_the_exchange_only_for_identity_auth(
    fake_metadata: FakeMetadata, tmp_path: Path, auth: str, wired: bool
) -> None:
    from agent.compose import compose

    config = replace(_config(fake_metadata, tmp_path, AUTH_AWS), auth=auth, token="t" * 36)
    agent = compose(config, environ={})
    try:
        assert isinstance(agent.connection.exchange, IdentityExchange) is wired
    finally:
        await agent.close_client()


def test_identity_code_stays_out_of_token_agents_and_needs_no_crypto(tmp_path: Path) -> None:
    """Token-auth agents never import agent.identity; identity agents never import
    cryptography or a cloud SDK (checked in a fresh interpreter)."""
    import subprocess
    import sys

    script = f"""
import sys
from pathlib import Path
from agent.compose import compose
from agent.config import AgentConfig
token = compose(AgentConfig(url="http://127.0.0.1:1", auth="token", token="t" * 36,
                            log_dir=Path({str(tmp_path)!r})), environ={{}})
assert not any(m.startswith("agent.identity") for m in sys.modules), "identity loaded"
aws = compose(AgentConfig(url="http://127.0.0.1:1", auth="aws-instance-identity", token="",
                          log_dir=Path({str(tmp_path)!r})), environ={{}})
assert "agent.identity.exchange" in sys.modules
heavy = [m for m in sys.modules if m.split(".")[0] in
         ("cryptography", "botocore", "boto3", "google", "azure", "asn1crypto", "aiohttp")]
assert not heavy, heavy
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
