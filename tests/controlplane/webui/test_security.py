"""Pure parts of the web sign-in: password hashes, the failure limiter, origins and
return_to."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.config import ServerConfig
from controlplane.passwords import (
    DUMMY_HASH,
    PasswordError,
    check_new_password,
    hash_password,
    verify_password,
)
from controlplane.webui.ratelimit import FailureLimiter
from controlplane.webui.security import origin_allowed, origin_of, safe_return_to

FAST = 10  # log2 N: the scheme and code path of the real thing, without its cost


def test_password_hash_round_trip_and_salt() -> None:
    first = hash_password("correct horse", log2_n=FAST)
    second = hash_password("correct horse", log2_n=FAST)
    assert first != second and first.startswith("scrypt$10$8$1$")
    assert verify_password("correct horse", first)
    assert not verify_password("correct horsE", first)
    assert not verify_password("", first)
    assert not verify_password("correct horse", "")
    assert not verify_password("anything at all", DUMMY_HASH)


def test_password_rules_and_unreadable_hash() -> None:
    with pytest.raises(PasswordError):
        check_new_password("short")
    with pytest.raises(PasswordError):
        check_new_password("x" * 1025)
    with pytest.raises(PasswordError):
        verify_password("whatever1", "scrypt$10$8$1$not-base64!$AAAA")
    with pytest.raises(PasswordError):
        verify_password("whatever1", "bcrypt$xyz")


def test_failure_limiter_window_and_cap() -> None:
    limiter = FailureLimiter(limit=3, window=60, max_keys=2)
    for t in (0, 1, 2):
        assert limiter.retry_after("alice", t) == 0
        limiter.failed("alice", t)
    assert limiter.retry_after("alice", 3) == pytest.approx(57)
    assert limiter.retry_after("alice", 60.5) == 0  # the oldest failure left the window
    limiter.succeeded("alice")
    assert limiter.retry_after("alice", 61) == 0
    for name in ("a", "b", "c"):
        limiter.failed(name, 70)
    assert len(limiter) == 2  # the least recently failed key was dropped


def test_origins() -> None:
    config = ServerConfig(
        data_dir=Path("/nonexistent"),
        access_url="https://Coder.Example.com:443/",
        wildcard_access_url="*.apps.example.com",
    )
    assert origin_of("https://Coder.Example.com:443/x") == "https://coder.example.com"
    assert origin_of("http://127.0.0.1:3000") == "http://127.0.0.1:3000"
    assert origin_allowed(config, "https://coder.example.com")
    assert not origin_allowed(config, "http://coder.example.com")
    assert not origin_allowed(config, "https://coder.example.com.evil.net")
    assert not origin_allowed(config, "null")
    assert not origin_allowed(config, "")
    app = "https://8080--main--dev--alice.apps.example.com"
    assert not origin_allowed(config, app)
    assert origin_allowed(config, app, app_hosts=True)
    assert not origin_allowed(config, "https://a.b.apps.example.com", app_hosts=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/gitauth/github", "/gitauth/github"),
        ("/@alice/dev.main/terminal?reconnect=x", "/@alice/dev.main/terminal?reconnect=x"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_return_to_only_same_origin_paths(value: str | None, expected: str) -> None:
    assert safe_return_to(value) == expected
