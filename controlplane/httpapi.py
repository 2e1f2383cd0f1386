"""HTTP plumbing with Coder's conventions (docs/protocol.md, "Conventions").

Every error is a JSON body ``{message, detail?, validations?}`` — never an HTML page or a
traceback. Responses are Go-style JSON (compact, trailing newline); "no body" is ``null``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

import structlog
from aiohttp import web

from agent.sdk.codec import parse_json
from agent.sdk.errors import DecodeError, ValidationError
from agent.sdk.models import ErrorResponse
from controlplane.store.base import StoreUnavailable

log = structlog.get_logger()

T = TypeVar("T")

BAD_JSON: Final = "Request body must be valid JSON."
REQUIRED_DETAIL: Final = 'Validation failed for tag "required" with value: "{value}"'


class HTTPError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        detail: str = "",
        validations: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = tuple(ValidationError(f, d) for f, d in validations)

    def body(self) -> dict[str, Any]:
        return ErrorResponse(self.message, self.detail, self.validations).to_json()


def encode(value: object) -> bytes:
    return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def respond(value: object, status: int = 200) -> web.Response:
    if status == 204:
        return web.Response(status=204)
    return web.Response(
        body=encode(value), status=status, content_type="application/json", charset="utf-8"
    )


def error_response(exc: HTTPError) -> web.Response:
    return respond(exc.body(), exc.status)


async def read_body(request: web.Request, limit: int, seconds: float) -> bytearray:
    """The request body, capped on the bytes actually read (a chunked body declares no
    length) and on time (413 past the cap, 408 if it trickles in slower than ``seconds``)."""
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(413, "Request body is too large.", f"The limit is {limit} bytes.")
    body = bytearray()
    try:
        if request.content.is_eof():
            # The whole body came with the head (an agent's report always does): nothing
            # to wait for, so no timer and no iterator for it (10 us of CPU less).
            body += request.content.read_nowait()
        else:
            async with asyncio.timeout(seconds):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > limit:
                        break
    except TimeoutError:
        raise HTTPError(
            408, "Request body was not received in time.", f"The limit is {seconds:g} seconds."
        ) from None
    except ConnectionResetError:
        # The client went away mid-body (gave up, crashed, lost its network): nobody will
        # read an answer, and it is no server fault to log with a traceback.
        raise HTTPError(
            400, "Request body was cut short.", "The client closed the connection."
        ) from None
    if len(body) > limit:
        raise HTTPError(413, "Request body is too large.", f"The limit is {limit} bytes.")
    return body


async def read_json(request: web.Request) -> object:
    """Read and parse a JSON body under the size cap (413 past it, 400 if malformed)."""
    from controlplane.appkeys import CONFIG

    config = request.app[CONFIG]
    chunks = await read_body(request, config.max_body_bytes, config.body_timeout)
    try:
        return parse_json(chunks.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HTTPError(400, BAD_JSON, str(exc)) from None


def decode_body(from_json: Callable[..., T], value: object, endpoint: str) -> T:
    """Decode a request body into its model; a wrong field is a 400 with validations."""
    try:
        return from_json(value, endpoint, fold_case=True)
    except DecodeError as exc:
        field = exc.path.removeprefix("$.").removeprefix("$") or "body"
        reason = exc.reason
        if reason == "required field is missing":
            reason = REQUIRED_DETAIL.format(value="")  # Coder's validator wording
        raise HTTPError(400, "Validation failed.", str(exc), [(field, reason)]) from None


def require_fields(values: dict[str, str]) -> None:
    """Coder's ``validate:"required"``: empty strings fail with its exact wording."""
    missing = [(k, REQUIRED_DETAIL.format(value=v)) for k, v in values.items() if not v]
    if missing:
        raise HTTPError(400, "Validation failed.", validations=missing)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as exc:
        log.info(
            "http.request_failed",
            method=request.method,
            path=request.path,
            status=exc.status,
            message=exc.message,
        )
        return error_response(exc)
    except StoreUnavailable as exc:
        # PostgreSQL is down or restarting: the client retries; the pool reconnects by
        # itself once the database is back.
        log.warning("http.store_unavailable", method=request.method, path=request.path)
        return respond(
            ErrorResponse("The database is unavailable; try again shortly.", str(exc)).to_json(),
            503,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "Route not found.", 405: "Method not allowed."}.get(exc.status, exc.reason)
        response = respond(ErrorResponse(message).to_json(), exc.status)
        # Keep what the exception says beyond its body, e.g. the ``Allow`` header of a 405.
        for name, value in exc.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response
    except Exception:
        log.exception("http.internal_error", method=request.method, path=request.path)
        return respond(ErrorResponse("An internal server error occurred.").to_json(), 500)
