"""Azure: the attested document (PKCS#7, base64) from IMDS.

``Metadata: true`` is mandatory and proxies must be bypassed (Microsoft's rule). A nonce,
when the control plane issued one, is echoed inside the signed content so the server can
tell a fresh document from a replayed one.
"""

from __future__ import annotations

import json
import re
from typing import Final
from urllib.parse import urlencode

import httpx

from agent.errors import IdentityError
from agent.identity.transport import body_text, describe, metadata_client, service_error
from agent.sdk.models import AzureInstanceIdentityToken

ATTESTED_PATH: Final = "/metadata/attested/document"
API_VERSION: Final = "2020-09-01"
CLOUD: Final = "Azure"
# IMDS documents the nonce as a "10-digit string"; refuse anything it would reject anyway.
_NONCE: Final = re.compile(r"[0-9]{1,10}")


class AzureIdentityFetcher:
    def __init__(self, endpoint: str, *, timeout: float = 2.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    async def fetch(self, nonce: str | None = None) -> AzureInstanceIdentityToken:
        params = {"api-version": API_VERSION}
        if nonce is not None:
            if not _NONCE.fullmatch(nonce):
                raise IdentityError(f"Azure nonce must be 1-10 digits, got {nonce!r}")
            params["nonce"] = nonce
        url = f"{self.endpoint}{ATTESTED_PATH}?{urlencode(params)}"
        async with metadata_client(self.timeout) as http:
            try:
                response = await http.get(url, headers={"Metadata": "true"})
            except httpx.HTTPError as exc:
                raise service_error(CLOUD, "GET", url, describe(exc)) from exc
        if response.status_code != 200:
            raise service_error(CLOUD, "GET", url, f"status {response.status_code}")
        text = body_text(CLOUD, "GET", url, response)
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise service_error(CLOUD, "GET", url, "answer is not JSON") from exc
        if not isinstance(body, dict):
            raise service_error(CLOUD, "GET", url, "answer is not a JSON object")
        signature, encoding = body.get("signature"), body.get("encoding")
        if not isinstance(signature, str) or not signature or not isinstance(encoding, str):
            raise service_error(CLOUD, "GET", url, "answer lacks signature/encoding strings")
        return AzureInstanceIdentityToken(signature=signature, encoding=encoding)
