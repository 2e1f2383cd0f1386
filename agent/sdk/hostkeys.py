"""The agent's SSH host key, as the agent reports it and the control plane publishes it.

``POST /api/v2/workspaceagents/me/ssh-host-key`` (agent) and
``GET /api/v2/workspaceagents/{id}/ssh-host-key`` (the workspace's owner) carry
``{"public_key": "ssh-ed25519 AAAA..."}``: one OpenSSH public key line, without comment.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final

from agent.sdk.codec import Obj
from agent.sdk.errors import DecodeError

ENDPOINT: Final = "ssh host key"
KEY_TYPES: Final = frozenset(
    {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"}
)
MAX_KEY_CHARS: Final = 4096


def normalize_public_key(text: str, endpoint: str = ENDPOINT) -> str:
    """``type base64`` from an OpenSSH public key line (a comment is dropped); the
    base64 blob must decode and start with the same type name."""
    fields = text.split()
    if len(text) > MAX_KEY_CHARS or len(fields) < 2:
        raise DecodeError(endpoint, "$.public_key", "not an OpenSSH public key line")
    kind, blob = fields[0], fields[1]
    if kind not in KEY_TYPES:
        raise DecodeError(endpoint, "$.public_key", f"unsupported key type {kind[:40]!r}")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(endpoint, "$.public_key", "key blob is not base64") from None
    name = kind.encode()
    if raw[:4] != len(name).to_bytes(4, "big") or raw[4 : 4 + len(name)] != name:
        raise DecodeError(endpoint, "$.public_key", "key blob does not match its type")
    return f"{kind} {blob}"


@dataclass(frozen=True, slots=True)
class SSHHostKey:
    public_key: str

    def to_json(self) -> dict[str, Any]:
        return {"public_key": self.public_key}

    @classmethod
    def from_json(
        cls, value: object, endpoint: str = ENDPOINT, *, fold_case: bool = False
    ) -> SSHHostKey:
        o = Obj(value, endpoint, fold_case=fold_case)
        return cls(normalize_public_key(o.text("public_key"), endpoint))
