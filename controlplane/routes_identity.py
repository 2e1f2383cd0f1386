"""Instance-identity endpoints: a cloud's signed proof in, the agent's session token out.

``POST /api/v2/workspaceagents/{aws,azure,google}-instance-identity`` need no session
token: the proof is the credential. Verify -> instance id -> the agent of the workspace's
latest build with that instance id (404 ``Instance with id "<id>" not found.``) -> a fresh
token of the identity's kind, valid for ``identity_token_ttl``. A proof that fails any
check is a 401 whose ``detail`` says which check, so operators can fix their setup.

Extension (not in Coder): ``POST .../azure-instance-identity/nonce`` issues a single-use
nonce for the agent to pass to Azure IMDS, so a captured document cannot be replayed when
``--azure-require-nonce`` is set. Agents that do not ask simply get no nonce checking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import structlog
from aiohttp import web

from agent.sdk.models import (
    AWSInstanceIdentityToken,
    AzureInstanceIdentityToken,
    GoogleInstanceIdentityToken,
)
from controlplane.appkeys import CONFIG, STORE
from controlplane.httpapi import HTTPError, decode_body, read_json, require_fields, respond
from controlplane.identity.errors import InvalidIdentity
from controlplane.identity.google_keys import KeySourceError
from controlplane.identity.service import IdentityService

log = structlog.get_logger()

T = TypeVar("T")

IDENTITY: web.AppKey[IdentityService] = web.AppKey("identity")
PREFIX = "/api/v2/workspaceagents"
AWS_KIND = "aws-instance-identity"
AZURE_KIND = "azure-instance-identity"
GOOGLE_KIND = "google-instance-identity"


async def _body(request: web.Request, from_json: Callable[..., T], kind: str) -> T:
    return decode_body(from_json, await read_json(request), f"POST {PREFIX}/{kind}")


async def _issue(request: web.Request, instance_id: str, kind: str) -> web.Response:
    store = request.app[STORE]
    agent = await store.agent_by_instance_id(instance_id)
    if agent is None:
        raise HTTPError(404, f'Instance with id "{instance_id}" not found.')
    if agent.auth_kind != kind:
        raise HTTPError(
            401,
            "Agent is not configured for this identity.",
            f"agent {agent.name!r} uses {agent.auth_kind!r} auth, not {kind!r}",
        )
    ttl = request.app[CONFIG].identity_token_ttl
    token = await store.issue_agent_token(agent.id, kind=kind, ttl_seconds=ttl)
    log.info("identity.token_issued", kind=kind, agent_id=agent.id, instance_id=instance_id)
    return respond({"session_token": token})


def _invalid(cloud: str, kind: str, exc: InvalidIdentity) -> HTTPError:
    log.info("identity.rejected", kind=kind, reason=exc.detail)
    return HTTPError(401, f"Invalid {cloud} identity.", exc.detail)


async def aws_identity(request: web.Request) -> web.Response:
    body = await _body(request, AWSInstanceIdentityToken.from_json, AWS_KIND)
    require_fields({"signature": body.signature, "document": body.document})
    try:
        identity = request.app[IDENTITY].aws(body.document, body.signature)
    except InvalidIdentity as exc:
        raise _invalid("AWS", AWS_KIND, exc) from None
    return await _issue(request, identity.instance_id, AWS_KIND)


async def google_identity(request: web.Request) -> web.Response:
    body = await _body(request, GoogleInstanceIdentityToken.from_json, GOOGLE_KIND)
    require_fields({"json_web_token": body.json_web_token})
    try:
        identity = await request.app[IDENTITY].google(body.json_web_token)
    except InvalidIdentity as exc:
        raise _invalid("GCP", GOOGLE_KIND, exc) from None
    except KeySourceError as exc:
        log.warning("identity.google_keys_unavailable", error=str(exc))
        raise HTTPError(503, "Google's signing keys are unavailable.", str(exc)) from None
    return await _issue(request, identity.instance_id, GOOGLE_KIND)


async def azure_identity(request: web.Request) -> web.Response:
    body = await _body(request, AzureInstanceIdentityToken.from_json, AZURE_KIND)
    # Coder requires both fields but ignores ``encoding``; so do we.
    require_fields({"signature": body.signature, "encoding": body.encoding})
    try:
        identity = await request.app[IDENTITY].azure(body.signature)
    except InvalidIdentity as exc:
        raise _invalid("Azure", AZURE_KIND, exc) from None
    return await _issue(request, identity.vm_id, AZURE_KIND)


async def azure_nonce(request: web.Request) -> web.Response:
    return respond({"nonce": request.app[IDENTITY].nonces.issue()})


def setup(app: web.Application) -> None:
    app[IDENTITY] = IdentityService(app[CONFIG].identity)
    app.router.add_post(f"{PREFIX}/{AWS_KIND}", aws_identity)
    app.router.add_post(f"{PREFIX}/{AZURE_KIND}", azure_identity)
    app.router.add_post(f"{PREFIX}/{GOOGLE_KIND}", google_identity)
    app.router.add_post(f"{PREFIX}/{AZURE_KIND}/nonce", azure_nonce)
