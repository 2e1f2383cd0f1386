"""The three identity endpoints of the real control plane, over loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.conftest import ControlPlane
from tests.e2e.identity.conftest import identity_config
from tests.fakes.cloudkeys import make_azure_material, rsa_key
from tests.fakes.metadata import FakeMetadata

pytestmark = pytest.mark.e2e

MakePlane = Callable[..., Awaitable[ControlPlane]]


async def _plane(
    make_control_plane: MakePlane, fake: FakeMetadata, **overrides: Any
) -> tuple[ControlPlane, dict[str, str]]:
    """A control plane trusting the fake's keys, with one workspace and an agent per cloud."""
    plane = await make_control_plane(identity=identity_config(fake, **overrides))
    await plane.create_user("owner")
    created = await plane.create_workspace(
        "owner",
        "ws",
        [
            {"name": "aws", "auth": "aws-instance-identity", "instance_id": fake.aws.instance_id},
            {
                "name": "gcp",
                "auth": "google-instance-identity",
                "instance_id": fake.google.instance_id,
            },
            {"name": "az", "auth": "azure-instance-identity", "instance_id": fake.azure.vm_id},
        ],
    )
    return plane, {name: agent_id for name, (agent_id, _) in created.items()}


async def _post(plane: ControlPlane, kind: str, body: object) -> httpx.Response:
    async with plane.http() as client:
        return await client.post(f"/api/v2/workspaceagents/{kind}-instance-identity", json=body)


async def _token_works(plane: ControlPlane, token: str) -> bool:
    async with plane.http(token) as client:
        response = await client.get("/api/v2/workspaceagents/me/metadata")
    return response.status_code == 200


def _aws_body(fake: FakeMetadata, **doc: Any) -> dict[str, str]:
    document = fake.aws.document(**doc)
    return {"document": document, "signature": fake.aws.sign(document)}


# ------------------------------------------------------------------------------- AWS


async def test_aws_identity_gets_a_working_token(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    response = await _post(plane, "aws", _aws_body(fake_metadata))
    assert response.status_code == 200, response.text
    assert await _token_works(plane, response.json()["session_token"])


async def test_aws_unknown_instance_is_404(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    response = await _post(plane, "aws", _aws_body(fake_metadata, instanceId="i-unknown"))
    assert response.status_code == 404
    assert response.json()["message"] == 'Instance with id "i-unknown" not found.'


@pytest.mark.parametrize("case", ["tampered", "wrong-key", "bad-base64"])
async def test_aws_invalid_proof_is_401(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata, case: str
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    body = _aws_body(fake_metadata)
    if case == "tampered":
        body["document"] = body["document"].replace("m5.large", "m5.xlarge")
    elif case == "wrong-key":
        body["signature"] = fake_metadata.aws.sign(body["document"], key=rsa_key("intruder"))
    else:
        body["signature"] = "not*base64"
    response = await _post(plane, "aws", body)
    assert response.status_code == 401
    payload = response.json()
    assert payload["message"] == "Invalid AWS identity."
    assert payload["detail"]
    assert "session_token" not in payload


async def test_aws_account_allow_list(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata, aws_allowed_accounts={"999"})
    response = await _post(plane, "aws", _aws_body(fake_metadata))
    assert response.status_code == 401
    assert "account" in response.json()["detail"]


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("aws", {"signature": "x"}, "document"),
        ("aws", {"signature": "", "document": "{}"}, "signature"),
        ("google", {}, "json_web_token"),
        ("azure", {"signature": "x"}, "encoding"),
    ],
)
async def test_missing_fields_are_400(
    make_control_plane: MakePlane,
    fake_metadata: FakeMetadata,
    kind: str,
    body: dict[str, str],
    field: str,
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    response = await _post(plane, kind, body)
    assert response.status_code == 400
    assert field in [v["field"] for v in response.json()["validations"]]


async def test_identity_for_an_agent_of_another_auth_kind_is_refused(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    """A valid AWS proof whose instance id belongs to a Google-auth agent gets no token."""
    plane, _ = await _plane(make_control_plane, fake_metadata)
    body = _aws_body(fake_metadata, instanceId=fake_metadata.google.instance_id)
    response = await _post(plane, "aws", body)
    assert response.status_code == 401
    assert "google-instance-identity" in response.json()["detail"]


# ------------------------------------------------------------------------------- Google


async def test_google_identity_gets_a_working_token_and_keys_are_cached(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    for _ in range(3):
        jwt = fake_metadata.google.mint()
        response = await _post(plane, "google", {"json_web_token": jwt})
        assert response.status_code == 200, response.text
    assert await _token_works(plane, response.json()["session_token"])
    assert fake_metadata.google_key_fetches == 1


def _claims(fake: FakeMetadata, **changes: Any) -> dict[str, Any]:
    claims = fake.google.claims()
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": None}, "'exp'"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
    ],
)
async def test_google_bad_claims_are_401(
    make_control_plane: MakePlane,
    fake_metadata: FakeMetadata,
    changes: dict[str, Any],
    detail: str,
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    jwt = fake_metadata.google.mint(_claims(fake_metadata, **changes))
    response = await _post(plane, "google", {"json_web_token": jwt})
    assert response.status_code == 401
    assert response.json()["message"] == "Invalid GCP identity."
    assert detail in response.json()["detail"]


async def test_google_wrong_key_and_project_allow_list(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(
        make_control_plane, fake_metadata, google_allowed_projects={"other-project"}
    )
    forged = fake_metadata.google.mint(key=rsa_key("intruder"))
    response = await _post(plane, "google", {"json_web_token": forged})
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]
    response = await _post(plane, "google", {"json_web_token": fake_metadata.google.mint()})
    assert response.status_code == 401
    assert "project" in response.json()["detail"]


# ------------------------------------------------------------------------------- Azure


async def test_azure_identity_gets_a_working_token(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    response = await _post(plane, "azure", fake_metadata.azure.response())
    assert response.status_code == 200, response.text
    assert await _token_works(plane, response.json()["session_token"])


async def test_azure_untrusted_root_and_foreign_signer_are_401(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata)
    rogue = make_azure_material("rogue")
    response = await _post(plane, "azure", rogue.response())
    assert response.status_code == 401
    assert "no trusted chain" in response.json()["detail"]
    foreign = make_azure_material("foreign", leaf_cn="metadata.example.com", leaf_san=[])
    plane2, _ = await _plane(
        make_control_plane,
        fake_metadata,
        azure_roots=(_pem(foreign.root),),
        azure_intermediates=(_pem(foreign.intermediate),),
    )
    response = await _post(plane2, "azure", foreign.response())
    assert response.status_code == 401
    assert "not an Azure metadata service" in response.json()["detail"]


async def test_azure_required_nonce_must_be_issued_and_is_single_use(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata
) -> None:
    plane, _ = await _plane(make_control_plane, fake_metadata, azure_require_nonce=True)
    response = await _post(plane, "azure", fake_metadata.azure.response("1234567890"))
    assert response.status_code == 401
    assert "nonce mismatch" in response.json()["detail"]
    async with plane.http() as client:
        issued = await client.post("/api/v2/workspaceagents/azure-instance-identity/nonce")
    nonce = issued.json()["nonce"]
    assert len(nonce) == 10 and nonce.isdigit()
    body = fake_metadata.azure.response(nonce)
    assert (await _post(plane, "azure", body)).status_code == 200
    replay = await _post(plane, "azure", body)
    assert replay.status_code == 401


def _pem(cert: Any) -> str:
    from tests.fakes.cloudkeys import pem

    return pem(cert)


@pytest.mark.parametrize("case", ["subscription", "stale", "wrong-key"])
async def test_azure_invalid_documents_are_401_without_a_token(
    make_control_plane: MakePlane, fake_metadata: FakeMetadata, case: str
) -> None:
    import datetime as dt

    az = fake_metadata.azure
    overrides: dict[str, Any] = {}
    if case == "subscription":
        overrides["azure_allowed_subscriptions"] = frozenset({"another-subscription"})
        body = az.response()
        detail = "subscription"
    elif case == "stale":
        created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
        body = {"encoding": "pkcs7", "signature": az.sign(az.content(created=created))}
        detail = "stale timeStamp"
    else:
        body = {"encoding": "pkcs7", "signature": az.sign(az.content(), leaf_key=rsa_key("x"))}
        detail = "content signature"
    plane, _ = await _plane(make_control_plane, fake_metadata, **overrides)
    response = await _post(plane, "azure", body)
    assert response.status_code == 401
    payload = response.json()
    assert payload["message"] == "Invalid Azure identity."
    assert detail in payload["detail"]
    assert "session_token" not in payload
