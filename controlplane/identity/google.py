"""Google: an RS256 JWT minted by the GCE metadata server, verified with ``cryptography``.

Checks, in order: the compact form, ``alg`` is RS256 (no "none", no HMAC confusion), the
signature against the key named by ``kid``, then the claims: ``exp`` (required), ``iat``
(required, not in the future), ``iss`` is Google, ``aud`` is the audience the agents were
told to ask for (Coder skips this one), the optional project allow-list, and finally
``google.compute_engine.instance_id``, which only ``format=full`` tokens carry.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from controlplane.identity.errors import InvalidIdentity

ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
MAX_TOKEN_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class GoogleIdentity:
    instance_id: str
    project_id: str
    project_number: str
    zone: str


@dataclass(frozen=True, slots=True)
class UnverifiedJwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else ""


def b64url_decode(text: str) -> bytes:
    if not text or any(c in text for c in "=+/ \n"):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_jwt(token: str) -> UnverifiedJwt:
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidIdentity("token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidIdentity("not a compact JWT (expected three dot-separated parts)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise InvalidIdentity(f"malformed JWT: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidIdentity("malformed JWT: header and payload must be JSON objects")
    return UnverifiedJwt(header, claims, f"{parts[0]}.{parts[1]}".encode(), signature)


def verify_signature(jwt: UnverifiedJwt, keys: Mapping[str, rsa.RSAPublicKey]) -> None:
    alg = jwt.header.get("alg")
    if alg != "RS256":
        raise InvalidIdentity(f"unsupported JWT alg {alg!r} (only RS256 is accepted)")
    key = keys.get(jwt.kid)
    if key is None:
        raise InvalidIdentity(f"unknown signing key id {jwt.kid!r}")
    try:
        key.verify(jwt.signature, jwt.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise InvalidIdentity("JWT signature does not verify") from exc


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if value is None:
        raise InvalidIdentity(f"token has no {name!r} claim")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidIdentity(f"claim {name!r} is not a number")
    return float(value)


def check_claims(
    claims: Mapping[str, Any],
    *,
    audience: str,
    now: float,
    leeway: float = 60.0,
    allowed_projects: frozenset[str] = frozenset(),
) -> GoogleIdentity:
    exp = _number(claims, "exp")
    iat = _number(claims, "iat")
    if now > exp + leeway:
        raise InvalidIdentity(f"token expired {int(now - exp)} s ago")
    if iat > now + leeway:
        raise InvalidIdentity("token issued in the future (iat)")
    if claims.get("iss") not in ISSUERS:
        raise InvalidIdentity(f"issuer {claims.get('iss')!r} is not Google")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise InvalidIdentity(f"audience {aud!r} is not {audience!r}")
    gce = claims.get("google", {})
    gce = gce.get("compute_engine") if isinstance(gce, dict) else None
    if not isinstance(gce, dict):
        raise InvalidIdentity(
            "token has no google.compute_engine claims (request it with format=full)"
        )
    project_id = str(gce.get("project_id", ""))
    project_number = str(gce.get("project_number", ""))
    if allowed_projects and not ({project_id, project_number} & allowed_projects):
        raise InvalidIdentity(f"project {project_id!r} ({project_number}) is not allowed")
    instance_id = gce.get("instance_id")
    if isinstance(instance_id, int) and not isinstance(instance_id, bool):
        instance_id = str(instance_id)
    if not isinstance(instance_id, str) or not instance_id:
        raise InvalidIdentity("token has no google.compute_engine.instance_id")
    return GoogleIdentity(instance_id, project_id, project_number, str(gce.get("zone", "")))


def verify_google(
    token: str,
    keys: Mapping[str, rsa.RSAPublicKey],
    *,
    audience: str,
    now: float,
    leeway: float = 60.0,
    allowed_projects: frozenset[str] = frozenset(),
) -> GoogleIdentity:
    jwt = parse_jwt(token)
    verify_signature(jwt, keys)
    return check_claims(
        jwt.claims, audience=audience, now=now, leeway=leeway, allowed_projects=allowed_projects
    )
