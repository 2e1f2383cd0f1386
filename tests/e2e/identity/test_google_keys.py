"""Google key source: both published formats, caching by max-age, unknown-kid refresh
(rate-limited), the air-gapped file, and failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.identity.google_keys import (
    MIN_REFRESH_INTERVAL,
    GoogleKeySource,
    KeySourceError,
    parse_keys,
)
from tests.fakes.metadata import FakeMetadata


@pytest.mark.e2e
def test_jwks_and_v1_pem_map_give_the_same_key(fake_metadata: FakeMetadata) -> None:
    g = fake_metadata.google
    from_jwks = parse_keys(json.dumps(g.jwks()).encode())
    from_v1 = parse_keys(json.dumps(g.v1_certs()).encode())
    assert from_jwks.keys() == from_v1.keys() == {g.kid}
    assert from_jwks[g.kid].public_numbers() == from_v1[g.kid].public_numbers()


@pytest.mark.parametrize("data", [b"nope", b"[]", b'{"kid": 5}', b'{"keys": [{"kty": "RSA"}]}'])
def test_malformed_key_documents(data: bytes) -> None:
    with pytest.raises(KeySourceError):
        parse_keys(data)


@pytest.mark.e2e
async def test_keys_are_cached_for_max_age(fake_metadata: FakeMetadata) -> None:
    now = [0.0]
    source = GoogleKeySource(fake_metadata.google_keys_url, clock=lambda: now[0])
    kid = fake_metadata.google.kid
    assert kid in await source.keys(kid)
    now[0] += 299
    await source.keys(kid)
    assert fake_metadata.google_key_fetches == 1
    now[0] += 2  # past the fake's max-age=300
    await source.keys(kid)
    assert fake_metadata.google_key_fetches == 2


@pytest.mark.e2e
async def test_unknown_kid_refreshes_at_most_once_per_interval(fake_metadata: FakeMetadata) -> None:
    now = [0.0]
    source = GoogleKeySource(fake_metadata.url + "/oauth2/v1/certs", clock=lambda: now[0])
    await source.keys()
    for _ in range(5):
        assert "rotated-kid" not in await source.keys("rotated-kid")
    assert fake_metadata.google_key_fetches == 1
    now[0] += MIN_REFRESH_INTERVAL
    await source.keys("rotated-kid")
    assert fake_metadata.google_key_fetches == 2


@pytest.mark.e2e
async def test_keys_from_a_file(fake_metadata: FakeMetadata, tmp_path: Path) -> None:
    path = tmp_path / "certs.json"
    path.write_text(json.dumps(fake_metadata.google.jwks()))
    source = GoogleKeySource("http://127.0.0.1:9/unused", file=path)
    assert fake_metadata.google.kid in await source.keys()
    missing = GoogleKeySource(file=tmp_path / "missing.json")
    with pytest.raises(KeySourceError, match=r"missing\.json"):
        await missing.keys()


@pytest.mark.e2e
async def test_unreachable_or_failing_url(fake_metadata: FakeMetadata, closed_url: str) -> None:
    with pytest.raises(KeySourceError):
        await GoogleKeySource(closed_url + "/certs", timeout=1.0).keys()
    with pytest.raises(KeySourceError, match="status 404"):
        await GoogleKeySource(fake_metadata.url + "/nothing-here").keys()


@pytest.mark.e2e
async def test_last_good_keys_survive_a_failed_refresh(
    fake_metadata: FakeMetadata, tmp_path: Path
) -> None:
    now = [0.0]
    path = tmp_path / "certs.json"
    path.write_text(json.dumps(fake_metadata.google.jwks()))
    source = GoogleKeySource(file=path, clock=lambda: now[0])
    kid = fake_metadata.google.kid
    assert kid in await source.keys()
    path.unlink()
    now[0] += 7200  # past the cache lifetime: a refresh is due and fails
    assert kid in await source.keys()
    assert source.fetches == 2
