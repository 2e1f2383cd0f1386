"""The agent's REST client: one method per endpoint of the agent API.

REST calls carry ``Coder-Session-Token`` and a 10 s timeout; WebSocket dials (made by the
coordinator and the PTY dial-back) use the ``coder_session_token`` cookie. Errors come back
typed: :class:`ApiError` (with the status and Coder's error body), :class:`TransportError`
(one of its kinds: timeout, refused, TLS, protocol) and :class:`DecodeError`. No httpx
exception escapes this module.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from agent.errors import (
    ApiError,
    ConnectRefused,
    DecodeError,
    ProtocolError,
    TransportError,
    TransportTimeout,
    UnauthorizedError,
    transport_kind,
)
from agent.sdk import codec
from agent.sdk.errors import ValidationError

if TYPE_CHECKING:
    from agent.sdk.agentmetadata import MetadataResult
    from agent.sdk.hostkeys import SSHHostKey
    from agent.sdk.models import (
        AuthenticateResponse,
        AWSInstanceIdentityToken,
        AzureInstanceIdentityToken,
        GitAuthResponse,
        GitSSHKey,
        GoogleInstanceIdentityToken,
        Metadata,
        PostStartupRequest,
        Stats,
        StatsResponse,
    )
    from agent.sdk.startuplogs import StartupLog

# The wire models (agent.sdk.models: dataclasses for every endpoint) are imported by the
# methods that build or decode them, not here: the agent sends its first request before
# they are imported (agent/firstrequest.py).

T = TypeVar("T")

API_PREFIX: Final = "/api/v2"
REST_TIMEOUT: Final = 10.0
SESSION_HEADER: Final = "Coder-Session-Token"
SESSION_COOKIE: Final = "coder_session_token"
MAX_RESPONSE_BYTES: Final = 16 << 20
MAX_ERROR_DETAIL: Final = 1024


class TokenHolder:
    """The current agent token; replaced on every identity exchange."""

    def __init__(self, token: str = "") -> None:
        self.token = token


def tls_context(
    *, insecure_skip_verify: bool, ca_file: str = "", url: str = ""
) -> ssl.SSLContext | bool:
    """What httpx should verify with. Verification is on unless the operator turns it off.

    For a plain ``http://`` control plane there is nothing to verify, and loading the CA
    bundle would cost start-up time and memory for nothing (httpx builds it eagerly).
    """
    if insecure_skip_verify or url.startswith("http://"):
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


def websocket_url(base_url: str, path: str, query: str = "") -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, query, ""))


METADATA_PATH: Final = "/workspaceagents/me/metadata"
MANIFEST_PATH: Final = "/workspaceagents/me/manifest"


class ControlPlaneClient:
    def __init__(
        self,
        base_url: str,
        tokens: TokenHolder,
        *,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | None = REST_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.verify = verify
        self._timeout = timeout
        self._metadata_path = METADATA_PATH
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            verify=verify,
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "wsagent"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ControlPlaneClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -------------------------------------------------------------- plumbing

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: str = "",
        auth: bool = True,
        extra_headers: dict[str, str] | None = None,
        request_timeout: float | object | None = httpx.USE_CLIENT_DEFAULT,
        on_sent: Callable[[], None] | None = None,
    ) -> bytes:
        url = API_PREFIX + path + (f"?{params}" if params else "")
        headers: dict[str, str] = dict(extra_headers or {})
        if auth:
            headers[SESSION_HEADER] = self.tokens.token
        content = None
        if body is not None:
            content = codec.dumps(body)
            headers["Content-Type"] = "application/json"
        full_url = self.base_url + url
        # httpx's timeout bounds each phase (connect, each read...), so a server that
        # drips a byte at a time could hold a call forever. Like Go's http.Client.Timeout,
        # the whole call, body included, gets one deadline.
        total = (
            request_timeout
            if request_timeout is None or isinstance(request_timeout, int | float)
            else self._timeout
        )
        deadline = None if total is None else asyncio.get_running_loop().time() + total
        try:
            async with asyncio.timeout_at(deadline):
                request = self._http.build_request(
                    method,
                    url,
                    content=content,
                    headers=headers,
                    timeout=request_timeout,  # type: ignore[arg-type]
                    extensions={} if on_sent is None else {"trace": _on_request_sent(on_sent)},
                )
                response = await self._http.send(request, stream=True)
                try:
                    data = await _read_capped(response, MAX_RESPONSE_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise TransportTimeout(method, full_url, f"timed out after {total}s") from exc
        except httpx.TimeoutException as exc:
            raise TransportTimeout(method, full_url, f"timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise http_error_kind(exc)(method, full_url, _describe(exc)) from exc
        if data is None:
            raise ProtocolError(
                method, full_url, f"response body larger than {MAX_RESPONSE_BYTES} bytes"
            )
        # Coder answers 200 (or 204 for report-lifecycle); any 2xx is a success, so a
        # proxy or another server implementation that picks the other one still works.
        if not 200 <= response.status_code < 300:
            raise _api_error(method, full_url, response, data)
        return data

    async def _decode(
        self,
        method: str,
        path: str,
        decoder: Callable[[object, str], T],
        **kwargs: Any,
    ) -> T:
        data = await self._request(method, path, **kwargs)
        endpoint = f"{method} {API_PREFIX}{path}"
        return decoder(codec.loads(endpoint, data), endpoint)

    # -------------------------------------------------------------- endpoints

    async def metadata(self, on_sent: Callable[[], None] | None = None) -> Metadata:
        """The agent's metadata. ``on_sent`` is called once the request has been written
        to the socket (not at all if it fails before that)."""
        path = self._metadata_path
        try:
            data = await self._request("GET", path, on_sent=on_sent)
        except ApiError as exc:
            if exc.status not in (404, 405) or path == MANIFEST_PATH:
                raise
            # Coder's servers from v0.22 serve this object only under its new name.
            path = self._metadata_path = MANIFEST_PATH
            data = await self._request("GET", path)
        # Imported once the request is out: the first one is sent before the models are.
        from agent.sdk.models import Metadata

        endpoint = f"GET {API_PREFIX}{path}"
        return Metadata.from_json(codec.loads(endpoint, data), endpoint)

    async def post_startup(self, request: PostStartupRequest) -> None:
        await self._request("POST", "/workspaceagents/me/startup", body=request.to_json())

    async def post_lifecycle(self, state: str) -> None:
        from agent.sdk.models import PostLifecycleRequest

        await self._request(
            "POST",
            "/workspaceagents/me/report-lifecycle",
            body=PostLifecycleRequest(state).to_json(),
        )

    async def post_ssh_host_key(self, key: SSHHostKey) -> None:
        await self._request("POST", "/workspaceagents/me/ssh-host-key", body=key.to_json())

    async def post_app_health(self, healths: dict[str, str]) -> None:
        from agent.sdk.models import PostAppHealthsRequest

        await self._request(
            "POST",
            "/workspaceagents/me/app-health",
            body=PostAppHealthsRequest(healths).to_json(),
        )

    async def patch_startup_logs(
        self, stream: str, first_seq: int, logs: tuple[StartupLog, ...]
    ) -> None:
        """Append lines to the agent's startup logs; ApiError 413 once they overflowed."""
        from agent.sdk.startuplogs import SEQ_HEADER, STREAM_HEADER, PatchStartupLogs

        await self._request(
            "PATCH",
            "/workspaceagents/me/startup-logs",
            body=PatchStartupLogs(logs).to_json(),
            extra_headers={STREAM_HEADER: stream, SEQ_HEADER: str(first_seq)},
        )

    async def post_metadata(self, key: str, result: MetadataResult) -> None:
        """One agent metadata key's latest result (204)."""
        await self._request(
            "POST",
            "/workspaceagents/me/metadata/" + quote(key, safe=""),
            body=result.to_json(),
        )

    async def report_stats(self, stats: Stats) -> StatsResponse:
        from agent.sdk.models import StatsResponse

        return await self._decode(
            "POST",
            "/workspaceagents/me/report-stats",
            StatsResponse.from_json,
            body=stats.to_json(),
        )

    async def git_auth(self, url: str, *, listen: bool = False) -> GitAuthResponse:
        from agent.sdk.models import GitAuthResponse

        # ``listen`` is a presence flag on the server, so it is sent without a value.
        params = "url=" + quote(url, safe="") + ("&listen" if listen else "")
        return await self._decode(
            "GET",
            "/workspaceagents/me/gitauth",
            GitAuthResponse.from_json,
            params=params,
            request_timeout=None if listen else httpx.USE_CLIENT_DEFAULT,
        )

    async def git_ssh_key(self) -> GitSSHKey:
        from agent.sdk.models import GitSSHKey

        return await self._decode("GET", "/workspaceagents/me/gitsshkey", GitSSHKey.from_json)

    async def auth_aws(self, token: AWSInstanceIdentityToken) -> AuthenticateResponse:
        return await self._identity("aws-instance-identity", token.to_json())

    async def auth_azure(self, token: AzureInstanceIdentityToken) -> AuthenticateResponse:
        return await self._identity("azure-instance-identity", token.to_json())

    async def auth_google(self, token: GoogleInstanceIdentityToken) -> AuthenticateResponse:
        return await self._identity("google-instance-identity", token.to_json())

    async def _identity(self, kind: str, body: dict[str, Any]) -> AuthenticateResponse:
        from agent.sdk.models import AuthenticateResponse

        return await self._decode(
            "POST",
            f"/workspaceagents/{kind}",
            AuthenticateResponse.from_json,
            body=body,
            auth=False,
        )

    def websocket_url(self, path: str, query: str = "") -> str:
        return websocket_url(self.base_url, API_PREFIX + path, query)

    def dial_back_url(self, replica_url: str, path: str, query: str = "") -> str:
        """The dial-back URL: on the replica that asked (several control-plane replicas),
        else on our control plane. Never a downgrade from TLS: with an https control
        plane a plain-http replica URL is ignored."""
        base = self.base_url
        if replica_url.startswith(("http://", "https://")) and not (
            base.startswith("https://") and not replica_url.startswith("https://")
        ):
            base = replica_url
        return websocket_url(base, API_PREFIX + path, query)

    def websocket_headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.tokens.token}", "User-Agent": "wsagent"}


# httpcore's trace event once the whole request has been written to the connection.
REQUEST_SENT_EVENT: Final = "http11.send_request_body.complete"


def _on_request_sent(
    callback: Callable[[], None],
) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """An httpx ``trace`` request extension that calls ``callback`` when the request has
    been sent (httpcore reports each step of a request to it)."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        del info
        if event == REQUEST_SENT_EVENT:
            callback()

    return trace


async def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The body, or None if it is longer than ``cap``: every buffer has a cap."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def http_error_kind(exc: httpx.HTTPError) -> type[TransportError]:
    """Which transport failure an httpx error is (httpx's tree, onto ours)."""
    if isinstance(exc, httpx.TimeoutException):
        return TransportTimeout
    if isinstance(exc, httpx.ConnectError):
        # httpx reports a failed TLS handshake as a ConnectError; the cause tells.
        kind = transport_kind(exc)
        return kind if kind is not TransportError else ConnectRefused
    if isinstance(exc, httpx.ProtocolError | httpx.ReadError | httpx.WriteError):
        return ProtocolError
    return transport_kind(exc)


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _api_error(method: str, url: str, response: httpx.Response, data: bytes) -> ApiError:
    """Turn an error answer into a typed error, as Coder's ReadBodyAsError does."""
    status = response.status_code
    cls = UnauthorizedError if status == 401 else ApiError
    ctype = response.headers.get("content-type", "")
    if "application/json" not in ctype:
        detail = data[:MAX_ERROR_DETAIL].decode("utf-8", "replace") or "no response body"
        return cls(method, url, status, f"unexpected non-JSON response {ctype!r}", detail)
    if not data.strip():
        return cls(method, url, status, "empty response body")
    from agent.sdk.models import ErrorResponse

    try:
        body = ErrorResponse.from_json(codec.loads(f"{method} {url}", data), f"{method} {url}")
    except DecodeError as exc:
        return cls(method, url, status, "malformed error body", exc.reason)
    message = body.message or f"unexpected status code {status}, response has no message"
    validations = [ValidationError(v.field, v.detail) for v in body.validations]
    return cls(method, url, status, message, body.detail, validations)
