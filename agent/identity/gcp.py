"""Google Compute Engine: a freshly minted identity JWT from the metadata server.

``format=full`` is what adds ``google.compute_engine.instance_id`` to the claims; the
audience is the value the control plane checks (default "coder"). The reply must carry
``Metadata-Flavor: Google``: anything else on that address is not a GCE metadata server.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlencode

import httpx

from agent.identity.transport import body_text, describe, metadata_client, service_error
from agent.sdk.models import GoogleInstanceIdentityToken

IDENTITY_PATH: Final = "/computeMetadata/v1/instance/service-accounts/default/identity"
FLAVOR_HEADER: Final = "Metadata-Flavor"
FLAVOR: Final = "Google"
CLOUD: Final = "Google"


def metadata_base(host: str) -> str:
    """GCE_METADATA_HOST is ``host[:port]`` without a scheme (google-auth's convention)."""
    host = host.strip().rstrip("/")
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


class GoogleIdentityFetcher:
    def __init__(self, host: str, *, audience: str = "coder", timeout: float = 2.0) -> None:
        self.base = metadata_base(host)
        self.audience = audience
        self.timeout = timeout

    async def fetch(self) -> GoogleInstanceIdentityToken:
        query = urlencode({"audience": self.audience, "format": "full"})
        url = f"{self.base}{IDENTITY_PATH}?{query}"
        async with metadata_client(self.timeout) as http:
            try:
                response = await http.get(url, headers={FLAVOR_HEADER: FLAVOR})
            except httpx.HTTPError as exc:
                raise service_error(CLOUD, "GET", url, describe(exc)) from exc
        if response.headers.get(FLAVOR_HEADER) != FLAVOR:
            raise service_error(CLOUD, "GET", url, "reply lacks Metadata-Flavor: Google")
        if response.status_code == 404:
            raise service_error(
                CLOUD, "GET", url, "404: the VM has no service account, so no identity token"
            )
        if response.status_code != 200:
            raise service_error(CLOUD, "GET", url, f"status {response.status_code}")
        jwt = body_text(CLOUD, "GET", url, response)
        if jwt.count(".") != 2:
            raise service_error(CLOUD, "GET", url, "answer is not a JWT")
        return GoogleInstanceIdentityToken(json_web_token=jwt)
