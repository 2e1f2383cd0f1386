"""The three metadata fetchers against the fake metadata service on loopback."""

from __future__ import annotations

import json
import time

import pytest

from agent.errors import IdentityError, MetadataServiceError
from agent.identity.aws import TOKEN_HEADER, AwsIdentityFetcher
from agent.identity.azure import AzureIdentityFetcher
from agent.identity.gcp import GoogleIdentityFetcher
from tests.fakes.metadata import FakeMetadata, WrongShapeServer

# ------------------------------------------------------------------------------- AWS


@pytest.mark.e2e
async def test_aws_imdsv2_token_is_used_and_reused(fake_metadata: FakeMetadata) -> None:
    """One PUT with a TTL; both GETs carry the token; a second fetch reuses it."""
    fake_metadata.aws_mode = "v2-required"
    fetcher = AwsIdentityFetcher(fake_metadata.url)
    first = await fetcher.fetch()
    second = await fetcher.fetch()
    assert first == second
    (put,) = fake_metadata.seen("/latest/api/token")
    assert put.method == "PUT"
    assert put.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    gets = fake_metadata.seen("/latest/dynamic/")
    assert len(gets) == 4
    assert {g.headers.get(TOKEN_HEADER) for g in gets} == fake_metadata.imds_tokens


@pytest.mark.e2e
async def test_aws_forwards_document_and_signature_byte_for_byte(
    fake_metadata: FakeMetadata,
) -> None:
    """The pretty-printed document and the wrapped base64 signature arrive unchanged."""
    token = await AwsIdentityFetcher(fake_metadata.url).fetch()
    expected_doc = fake_metadata.aws.document()
    assert token.document == expected_doc
    assert "\n" in token.document and "\n" in token.signature
    assert token.signature == fake_metadata.aws.sign(expected_doc)


@pytest.mark.e2e
async def test_aws_token_expiry_leads_to_a_new_token(fake_metadata: FakeMetadata) -> None:
    """Past its TTL (minus a margin) the token is renewed before use."""
    now = [1000.0]
    fetcher = AwsIdentityFetcher(fake_metadata.url, token_ttl=120, clock=lambda: now[0])
    await fetcher.fetch()
    now[0] += 30
    await fetcher.fetch()
    assert fetcher.token_puts == 1
    now[0] += 60  # 90 s > 120 s TTL - 60 s margin
    await fetcher.fetch()
    assert fetcher.token_puts == 2


@pytest.mark.e2e
async def test_aws_revoked_token_is_replaced_once(fake_metadata: FakeMetadata) -> None:
    """A 401 to a cached token (IMDS restarted) gets a fresh token, not a failure."""
    fake_metadata.aws_mode = "v2-required"
    fetcher = AwsIdentityFetcher(fake_metadata.url)
    await fetcher.fetch()
    fake_metadata.revoke_imds_tokens()
    token = await fetcher.fetch()
    assert token.document == fake_metadata.aws.document()
    assert fetcher.token_puts == 2


@pytest.mark.e2e
async def test_aws_falls_back_to_imdsv1_on_405(fake_metadata: FakeMetadata) -> None:
    """PUT -> 405: the GETs go out without a token."""
    fake_metadata.aws_mode = "v1-only"
    token = await AwsIdentityFetcher(fake_metadata.url).fetch()
    assert token.document == fake_metadata.aws.document()
    assert all(TOKEN_HEADER not in g.headers for g in fake_metadata.seen("/latest/dynamic/"))


@pytest.mark.e2e
async def test_aws_falls_back_to_imdsv1_when_the_put_never_answers(
    fake_metadata: FakeMetadata,
) -> None:
    """The container hop-limit case: the PUT times out, IMDSv1 still works."""
    fake_metadata.aws_mode = "put-silent"
    started = time.monotonic()
    token = await AwsIdentityFetcher(fake_metadata.url, timeout=0.5).fetch()
    assert token.document == fake_metadata.aws.document()
    assert time.monotonic() - started < 3.0


@pytest.mark.e2e
async def test_aws_v2_required_but_put_unanswered_is_a_clear_error(
    fake_metadata: FakeMetadata,
) -> None:
    """Hop limit 1 on a v2-only instance: the error names the real cause."""
    fake_metadata.aws_mode = "put-silent-required"
    with pytest.raises(MetadataServiceError, match="IMDSv2 is required"):
        await AwsIdentityFetcher(fake_metadata.url, timeout=0.3).fetch()


# ------------------------------------------------------------------------------- Google


@pytest.mark.e2e
async def test_google_asks_with_audience_format_and_flavor(fake_metadata: FakeMetadata) -> None:
    """The request carries the configured audience, format=full and the flavour header."""
    token = await GoogleIdentityFetcher(fake_metadata.host, audience="https://cp.test").fetch()
    (req,) = fake_metadata.seen("/computeMetadata/")
    assert req.query == {"audience": ["https://cp.test"], "format": ["full"]}
    assert req.headers["Metadata-Flavor"] == "Google"
    payload = token.json_web_token.split(".")[1]
    claims = json.loads(_b64url_decode(payload))
    assert claims["aud"] == "https://cp.test"
    assert claims["google"]["compute_engine"]["instance_id"] == fake_metadata.google.instance_id


@pytest.mark.e2e
async def test_google_refuses_a_reply_without_the_flavor_header(
    wrong_shape: WrongShapeServer,
) -> None:
    """A 200 from something that is not the GCE metadata server is not a token."""
    with pytest.raises(MetadataServiceError, match="Metadata-Flavor"):
        await GoogleIdentityFetcher(wrong_shape.host).fetch()


@pytest.mark.e2e
async def test_google_slow_service_times_out(fake_metadata: FakeMetadata) -> None:
    fake_metadata.delay = 2.0
    started = time.monotonic()
    with pytest.raises(MetadataServiceError, match="timed out"):
        await GoogleIdentityFetcher(fake_metadata.host, timeout=0.3).fetch()
    assert time.monotonic() - started < 1.5


# ------------------------------------------------------------------------------- Azure


@pytest.mark.e2e
async def test_azure_fetches_the_attested_document_with_nonce(fake_metadata: FakeMetadata) -> None:
    """api-version, Metadata: true and the nonce go out; the signature comes back as is."""
    token = await AzureIdentityFetcher(fake_metadata.url).fetch(nonce="1234567890")
    (req,) = fake_metadata.seen("/metadata/attested/document")
    assert req.query == {"api-version": ["2020-09-01"], "nonce": ["1234567890"]}
    assert req.headers["Metadata"] == "true"
    assert token.encoding == "pkcs7"
    assert len(token.signature) > 500


@pytest.mark.e2e
async def test_azure_rejects_a_malformed_nonce(fake_metadata: FakeMetadata) -> None:
    with pytest.raises(IdentityError, match="nonce"):
        await AzureIdentityFetcher(fake_metadata.url).fetch(nonce="12; rm -rf")
    assert fake_metadata.requests == []


@pytest.mark.e2e
async def test_azure_wrong_shape_listener_is_an_error(wrong_shape: WrongShapeServer) -> None:
    with pytest.raises(MetadataServiceError, match="not JSON"):
        await AzureIdentityFetcher(wrong_shape.url).fetch()


@pytest.mark.e2e
async def test_silent_service_fails_every_fetcher_within_the_deadline(
    fake_metadata: FakeMetadata,
) -> None:
    """A black hole: each fetch ends with a typed error after about its timeout."""
    fake_metadata.silent = True
    started = time.monotonic()
    with pytest.raises(MetadataServiceError):
        await AzureIdentityFetcher(fake_metadata.url, timeout=0.3).fetch()
    with pytest.raises(MetadataServiceError):
        await GoogleIdentityFetcher(fake_metadata.host, timeout=0.3).fetch()
    with pytest.raises(MetadataServiceError):
        # The PUT times out (-> v1 fallback), then the GET times out too.
        await AwsIdentityFetcher(fake_metadata.url, timeout=0.3).fetch()
    assert time.monotonic() - started < 3.0


async def test_fetchers_report_a_closed_port(closed_url: str) -> None:
    with pytest.raises(MetadataServiceError, match="ConnectError"):
        await AzureIdentityFetcher(closed_url).fetch()
    with pytest.raises(MetadataServiceError, match="ConnectError"):
        await AwsIdentityFetcher(closed_url).fetch()


def _b64url_decode(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.e2e
async def test_metadata_services_refuse_requests_without_their_headers(
    fake_metadata: FakeMetadata,
) -> None:
    """The fake enforces what the real services do, so the fetchers' header tests mean
    something: no header, no identity."""
    import httpx

    async with httpx.AsyncClient(base_url=fake_metadata.url, trust_env=False) as http:
        azure = await http.get("/metadata/attested/document?api-version=2020-09-01")
        google = await http.get(
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=coder"
        )
        aws = await http.put("/latest/api/token")
    assert azure.status_code == 400
    assert google.status_code == 403
    assert aws.status_code == 400


@pytest.mark.e2e
async def test_a_refusing_service_is_a_typed_error(fake_metadata: FakeMetadata) -> None:
    """Whatever the service refuses surfaces as MetadataServiceError with the status."""
    fake_metadata.clouds = frozenset({"aws"})  # Azure paths now answer 404
    with pytest.raises(MetadataServiceError, match="status 404"):
        await AzureIdentityFetcher(fake_metadata.url).fetch()


@pytest.mark.e2e
async def test_aws_tokens_rejected_even_when_fresh_is_a_typed_error(
    fake_metadata: FakeMetadata,
) -> None:
    """One retry with a new token, then a MetadataServiceError (nothing untyped escapes)."""
    fake_metadata.aws_mode = "reject-tokens"
    fetcher = AwsIdentityFetcher(fake_metadata.url)
    with pytest.raises(MetadataServiceError, match="401 even with a fresh token"):
        await fetcher.fetch()
    assert fetcher.token_puts == 2


@pytest.mark.e2e
async def test_proxy_settings_are_ignored(
    fake_metadata: FakeMetadata, closed_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy in the environment would take 169.254.169.254 elsewhere (Azure forbids
    proxies): the fetchers never use one."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, closed_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    await AwsIdentityFetcher(fake_metadata.url).fetch()
    await GoogleIdentityFetcher(fake_metadata.host).fetch()
    await AzureIdentityFetcher(fake_metadata.url).fetch()


@pytest.mark.e2e
async def test_aws_remembers_the_v1_fallback_for_a_while(fake_metadata: FakeMetadata) -> None:
    """After a PUT timeout the next exchanges go straight to IMDSv1 (no timeout each time),
    until IMDSv1 turns out to be refused."""
    fake_metadata.aws_mode = "put-silent"
    fetcher = AwsIdentityFetcher(fake_metadata.url, timeout=0.3)
    await fetcher.fetch()
    await fetcher.fetch()
    assert len(fake_metadata.seen("/latest/api/token")) == 1  # the second went straight to v1
    fake_metadata.aws_mode = "v2-required"  # v1 now refused: the fetcher asks for a token
    with pytest.raises(MetadataServiceError, match="IMDSv2 is required"):
        await fetcher.fetch()
    token = await fetcher.fetch()
    assert token.document == fake_metadata.aws.document()
    assert len(fake_metadata.seen("/latest/api/token")) == 2
