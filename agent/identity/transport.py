"""One place that builds the metadata HTTP client and maps its errors.

Metadata services are link-local and answer in milliseconds; anything slower is a
misconfiguration, a container hop limit, or not a metadata service at all. So every call
has a short connect timeout and a ~2 s overall deadline, proxies are ignored (Azure
requires it, and a proxy would turn "169.254.169.254" into somebody else's host) and
redirects are never followed.
"""

from __future__ import annotations

import functools
import ssl
from typing import Final

import httpx

from agent.errors import MetadataServiceError

CONNECT_TIMEOUT: Final = 0.5
MAX_BODY_BYTES: Final = 64 * 1024


@functools.cache
def _tls() -> ssl.SSLContext:
    # Metadata services are plain HTTP on a link-local address; a context is only needed
    # if an operator points an endpoint at https. Building one per client would reload
    # the CA bundle on every exchange (~10 ms), so it is built once, on first use.
    return ssl.create_default_context()


def metadata_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=_tls(),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
        headers={"User-Agent": "wsagent"},
    )


def describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def service_error(cloud: str, method: str, url: str, reason: str) -> MetadataServiceError:
    return MetadataServiceError(f"{cloud} metadata service: {method} {url}: {reason}")


def body_text(cloud: str, method: str, url: str, response: httpx.Response) -> str:
    """The body as text, unchanged (it is forwarded byte for byte), within a size cap."""
    data = response.content
    if len(data) > MAX_BODY_BYTES:
        raise service_error(cloud, method, url, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise service_error(cloud, method, url, "body is not UTF-8 text") from exc
