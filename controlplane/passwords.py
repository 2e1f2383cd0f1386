"""Password hashing: scrypt from the standard library (no new dependency).

scrypt is memory-hard, which is what makes offline guessing expensive on GPUs; argon2id
would be as good but needs a compiled package on the server. The parameters follow
OWASP's minimum for scrypt (N=2^17, r=8, p=1: 128 MiB and a few hundred milliseconds per
hash) and are stored inside each hash, so raising them later keeps old hashes valid:
``scrypt$<log2 N>$<r>$<p>$<salt, base64>$<key, base64>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

SCHEME: Final = "scrypt"
LOG2_N: Final = 17
BLOCK_SIZE: Final = 8
PARALLELISM: Final = 1
SALT_BYTES: Final = 16
KEY_BYTES: Final = 32
MAX_PASSWORD_BYTES: Final = 1024
MIN_PASSWORD_CHARS: Final = 8
# Far above what any stored hash needs (128 * r * N * p bytes), below a runaway.
_MAX_MEMORY: Final = 512 * 1024 * 1024


class PasswordError(ValueError):
    """A password is refused (too short, too long) or a stored hash is unreadable."""


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise PasswordError(f"a password is at most {MAX_PASSWORD_BYTES} bytes")


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAX_MEMORY, dklen=KEY_BYTES
    )


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    """A new salted hash of ``password`` (slow on purpose: run it off the event loop)."""
    check_new_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, log2_n, BLOCK_SIZE, PARALLELISM)
    b64 = base64.b64encode
    return f"{SCHEME}${log2_n}${BLOCK_SIZE}${PARALLELISM}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; an empty ``stored`` matches nothing."""
    if not stored:
        return False
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return False
    try:
        scheme, log2_n, r, p, salt, key = stored.split("$")
        if scheme != SCHEME:
            raise ValueError(scheme)
        expected = base64.b64decode(key, validate=True)
        derived = _derive(
            password, base64.b64decode(salt, validate=True), int(log2_n), int(r), int(p)
        )
    except ValueError as exc:
        raise PasswordError("the stored password hash is unreadable") from exc
    return hmac.compare_digest(derived, expected)


# Verifying against this when the user does not exist (or has no password) costs the same
# as a real check, so response times do not reveal which user names exist.
_ZEROS: Final = base64.b64encode(bytes(KEY_BYTES)).decode()
DUMMY_HASH: Final = f"{SCHEME}${LOG2_N}${BLOCK_SIZE}${PARALLELISM}${_ZEROS}${_ZEROS}"
