"""Google verifier: RS256 signature, then exp/iat/iss/aud/project/instance id."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.identity.errors import InvalidIdentity
from controlplane.identity.google import verify_google
from tests.fakes.cloudkeys import GoogleMaterial, b64url, make_google_material, rsa_key


@pytest.fixture(scope="module")
def g() -> GoogleMaterial:
    return make_google_material()


def _keys(g: GoogleMaterial) -> dict[str, rsa.RSAPublicKey]:
    return {g.kid: g.key.public_key()}


def _verify(g: GoogleMaterial, token: str, **kwargs: Any) -> Any:
    kwargs.setdefault("audience", "coder")
    kwargs.setdefault("now", time.time())
    return verify_google(token, _keys(g), **kwargs)


def _with(g: GoogleMaterial, **changes: Any) -> dict[str, Any]:
    claims = g.claims()
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def test_valid_token(g: GoogleMaterial) -> None:
    identity = _verify(g, g.mint())
    assert identity.instance_id == g.instance_id
    assert identity.project_id == g.project_id


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"exp": None}, "no 'exp' claim"),
        ({"exp": "tomorrow"}, "'exp' is not a number"),
        ({"iat": None}, "no 'iat' claim"),
        ({"iat": int(time.time()) + 3600}, "future"),
        ({"iss": "https://accounts.example.com"}, "issuer"),
        ({"aud": "https://other.example"}, "audience"),
        ({"google": None}, "format=full"),
        ({"google": {"compute_engine": {"project_id": "p"}}}, "instance_id"),
    ],
)
def test_bad_claims(g: GoogleMaterial, changes: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidIdentity, match=match):
        _verify(g, g.mint(_with(g, **changes)))


def test_leeway_and_issuer_variants(g: GoogleMaterial) -> None:
    now = time.time()
    _verify(g, g.mint(_with(g, exp=int(now) - 30)), now=now)  # within 60 s of skew
    _verify(g, g.mint(_with(g, iss="accounts.google.com")))
    _verify(g, g.mint(_with(g, aud=["x", "coder"])))


def test_project_allow_list_by_id_or_number(g: GoogleMaterial) -> None:
    token = g.mint()
    _verify(g, token, allowed_projects=frozenset({g.project_id}))
    _verify(g, token, allowed_projects=frozenset({str(g.project_number)}))
    with pytest.raises(InvalidIdentity, match="project"):
        _verify(g, token, allowed_projects=frozenset({"someone-elses"}))


def test_signature_checks(g: GoogleMaterial) -> None:
    with pytest.raises(InvalidIdentity, match="does not verify"):
        _verify(g, g.mint(key=rsa_key("intruder")))
    with pytest.raises(InvalidIdentity, match="unknown signing key id"):
        _verify(g, g.mint(kid="other-kid"))
    # Swap in a payload naming another instance, keeping the genuine signature.
    header, _, sig = g.mint().split(".")
    claims = g.claims()
    claims["google"]["compute_engine"]["instance_id"] = "999"
    forged = ".".join([header, b64url(json.dumps(claims).encode()), sig])
    with pytest.raises(InvalidIdentity, match="does not verify"):
        _verify(g, forged)


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512"])
def test_only_rs256_is_accepted(g: GoogleMaterial, alg: str) -> None:
    with pytest.raises(InvalidIdentity, match="only RS256"):
        _verify(g, g.mint(alg=alg))


@pytest.mark.parametrize(
    "token",
    [
        "a.b",
        "not-a-jwt",
        "!!.??.**",
        base64.urlsafe_b64encode(b"[1]").decode().rstrip("=") + ".e30.c2ln",
    ],
)
def test_malformed_tokens(g: GoogleMaterial, token: str) -> None:
    with pytest.raises(InvalidIdentity):
        _verify(g, token)
