"""The one error hierarchy of wsagent, rooted here so that the pure SDK can raise it.

WsagentError
├── DecodeError            a body did not match its wire model (endpoint + field path)
├── ApiError               the control plane answered with a Coder error body
│   └── UnauthorizedError  ... with status 401
├── ConfigError            a bad or missing setting (agent: exit code 2)
└── (agent.errors)         TransportError, IdentityError, ProcessError, ...
"""

from __future__ import annotations

from dataclasses import dataclass


class WsagentError(Exception):
    """Base class of every error wsagent raises on purpose."""


class DecodeError(WsagentError):
    """A JSON body did not match the wire model expected for an endpoint."""

    def __init__(self, endpoint: str, path: str, reason: str) -> None:
        self.endpoint = endpoint
        self.path = path
        self.reason = reason
        super().__init__(f"decode {endpoint}: {path}: {reason}")


@dataclass(frozen=True, slots=True)
class ValidationError:
    field: str
    detail: str


class ApiError(WsagentError):
    """A non-success answer from the control plane, carrying Coder's error body."""

    def __init__(
        self,
        method: str,
        url: str,
        status: int,
        message: str,
        detail: str = "",
        validations: list[ValidationError] | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.message = message
        self.detail = detail
        self.validations = validations or []
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.method} {self.url}: unexpected status code {self.status}: {self.message}"
        if self.detail:
            text += f"\n\tError: {self.detail}"
        for v in self.validations:
            text += f"\n\t{v.field}: {v.detail}"
        return text


class UnauthorizedError(ApiError):
    """The control plane rejected our credentials (HTTP 401)."""


class ConfigError(WsagentError):
    """A setting is missing or invalid. ``setting`` names the env var or flag."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{setting}: {reason}")
