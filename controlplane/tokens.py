"""Secret tokens: 256 random bits, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Final

TOKEN_BYTES: Final = 32
_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_\-]{32,128}")


def new_token() -> str:
    # A token starting with "-" would be taken for a flag on command lines
    # (`wsagent terminal --token -abc...`), so draw again; 256 random bits either way.
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if token[0] != "-":
            return token


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed(token: str) -> bool:
    """Cheap shape check before any lookup (rejects garbage with a precise error)."""
    return _TOKEN_SHAPE.fullmatch(token) is not None
