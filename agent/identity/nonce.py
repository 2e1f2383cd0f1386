"""Single-use Azure nonces from the control plane (a wsagent extension to the API).

The attested document has no expiry worth the name and can be replayed by anything that
reads it once; a nonce the server issued and then sees echoed inside the signed content
cannot. Coder servers do not have the endpoint: a 404/405/501 means "not supported" and
the agent stops asking, exactly as before this extension existed.
"""

from __future__ import annotations

import re
import ssl
from typing import Final

import httpx
import structlog

log = structlog.get_logger()

NONCE_PATH: Final = "/api/v2/workspaceagents/azure-instance-identity/nonce"
UNSUPPORTED: Final = frozenset({404, 405, 501})
_NONCE: Final = re.compile(r"[0-9]{1,10}")


class ServerNonceSource:
    def __init__(
        self, base_url: str, *, verify: ssl.SSLContext | bool = True, timeout: float = 10.0
    ) -> None:
        self.url = base_url.rstrip("/") + NONCE_PATH
        self.verify = verify
        self.timeout = timeout
        self.supported = True

    async def __call__(self) -> str | None:
        """A fresh nonce, or None when the server has none to give (then none is sent)."""
        if not self.supported:
            return None
        try:
            async with httpx.AsyncClient(
                verify=self.verify, timeout=self.timeout, follow_redirects=False
            ) as http:
                response = await http.post(self.url, headers={"User-Agent": "wsagent"})
        except httpx.HTTPError as exc:
            log.info("identity.nonce_unavailable", error=str(exc) or type(exc).__name__)
            return None
        if response.status_code in UNSUPPORTED:
            self.supported = False
            log.info("identity.nonce_unsupported", status=response.status_code)
            return None
        try:
            nonce = response.json().get("nonce") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            nonce = None
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            log.info("identity.nonce_unavailable", status=response.status_code)
            return None
        return nonce
