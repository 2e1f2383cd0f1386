"""agent.retry: the one retry policy (what is retryable, backoff, throttled logs) and the
transport error kinds it tells apart. Pure: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import ssl

import httpx
import pytest

from agent.client import http_error_kind
from agent.errors import (
    ApiError,
    ConfigError,
    ConnectRefused,
    DecodeError,
    ProtocolError,
    TLSError,
    TransportError,
    TransportTimeout,
    UnauthorizedError,
    WsagentError,
    transport_kind,
)
from agent.retry import FailureThrottle, Retry, error_key, is_retryable

URL = "http://cp/api/v2/workspaceagents/me/metadata"

# ---------------------------------------------------------------- is_retryable


@pytest.mark.parametrize(
    "error",
    [
        TransportTimeout("GET", URL, "timed out"),
        ConnectRefused("GET", URL, "refused"),
        TLSError("GET", URL, "certificate verify failed"),
        ProtocolError("GET", URL, "server disconnected"),
        TransportError("GET", URL, "proxy error"),
        ApiError("GET", URL, 502, "bad gateway"),
        UnauthorizedError("GET", URL, 401, "unauthorized"),
        DecodeError("GET /metadata", "$.apps", "expected an array"),
        WsagentError("any other expected failure"),
        RuntimeError("a bug: retried, logged with its traceback"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_failures_of_the_outside_world_are_retryable(error: BaseException) -> None:
    assert is_retryable(error)


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("CODER_AGENT_AUTH", "no cloud detected"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_bad_setting_or_a_cancellation_is_not_retryable(error: BaseException) -> None:
    assert not is_retryable(error)


# ---------------------------------------------------------------- transport kinds


def _caused(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ConnectTimeout("slow"), TransportTimeout),
        (httpx.ReadTimeout("slow"), TransportTimeout),
        (_caused(httpx.ConnectError("refused"), ConnectionRefusedError()), ConnectRefused),
        (_caused(httpx.ConnectError("dns"), socket.gaierror(-2, "unknown")), ConnectRefused),
        (httpx.ConnectError("no cause"), ConnectRefused),
        (
            _caused(httpx.ConnectError("tls"), ssl.SSLCertVerificationError("verify failed")),
            TLSError,
        ),
        (httpx.RemoteProtocolError("server disconnected"), ProtocolError),
        (httpx.ReadError("reset"), ProtocolError),
        (httpx.UnsupportedProtocol("ftp://"), TransportError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.__name__,
)
def test_httpx_errors_map_onto_the_transport_kinds(
    error: httpx.HTTPError, kind: type[TransportError]
) -> None:
    assert http_error_kind(error) is kind


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TimeoutError(), TransportTimeout),
        (ssl.SSLError("wrong version number"), TLSError),
        (ConnectionRefusedError(), ConnectRefused),
        (OSError(errno.EHOSTUNREACH, "no route to host"), ConnectRefused),
        (_caused(ValueError("wrapped"), TimeoutError()), TransportTimeout),
        (ConnectionResetError(), TransportError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.__name__,
)
def test_socket_errors_map_onto_the_transport_kinds(
    error: BaseException, kind: type[TransportError]
) -> None:
    assert transport_kind(error) is kind


def test_every_kind_is_a_transport_error() -> None:
    for kind in (TransportTimeout, ConnectRefused, TLSError, ProtocolError):
        error = kind("GET", URL, "why")
        assert isinstance(error, TransportError) and isinstance(error, WsagentError)
        assert str(error) == f"GET {URL}: why"


# ---------------------------------------------------------------- Retry


def test_retry_delays_grow_with_jitter_and_a_success_starts_again() -> None:
    retry = Retry(1.0, 8.0, rng=random.Random(3))
    down = ConnectRefused("GET", URL, "refused")
    delays = [retry.failed(down, float(t)).delay for t in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base / 2 <= delay <= base
    assert retry.failing
    assert retry.succeeded() == 6
    assert not retry.failing
    assert retry.failed(down, 10.0).delay <= 1.0


def test_retry_logs_the_first_failure_then_rarely() -> None:
    retry = Retry(1.0, 8.0, throttle=FailureThrottle(first_quiet=60))
    down = ConnectRefused("GET", URL, "refused")
    repeats = [retry.failed(down, float(t)).repeats for t in range(0, 100, 5)]
    assert [r for r in repeats if r is not None] == [1, 13]  # at 0 s, then at 60 s


def test_retry_a_new_kind_of_failure_is_news_at_once() -> None:
    retry = Retry(1.0, 8.0)
    assert retry.failed(ConnectRefused("GET", URL, "refused"), 0.0).repeats == 1
    assert retry.failed(ConnectRefused("GET", URL, "refused"), 1.0).repeats is None
    assert retry.failed(TransportTimeout("GET", URL, "timed out"), 2.0).repeats == 1


def test_retry_reset_backoff_keeps_the_log_quiet() -> None:
    """A reconnect retries soon, but the same failure again is not news."""
    retry = Retry(1.0, 16.0, rng=random.Random(0))
    down = ConnectRefused("GET", URL, "refused")
    for t in range(5):
        retry.failed(down, float(t))
    retry.reset_backoff()
    failure = retry.failed(down, 6.0)
    assert failure.delay <= 1.0
    assert failure.repeats is None


# ---------------------------------------------------------------- FailureThrottle


def test_throttle_logs_first_then_rarely_with_doubling_quiet_periods() -> None:
    throttle = FailureThrottle(first_quiet=60, max_quiet=240)
    logged = [t for t in range(0, 1000) if throttle.failure("refused", float(t)) is not None]
    # First at 0; then after 60 s, 120 s, 240 s, 240 s... quiet periods.
    assert logged == [0, 60, 180, 420, 660, 900]


def test_throttle_reports_the_repeat_count() -> None:
    throttle = FailureThrottle(first_quiet=10)
    counts = [throttle.failure("k", float(t)) for t in range(12)]
    assert counts[0] == 1
    assert counts[10] == 11
    assert [c for c in counts if c is not None] == [1, 11]


def test_throttle_logs_a_new_kind_of_failure_at_once() -> None:
    throttle = FailureThrottle()
    assert throttle.failure("500", 0.0) == 1
    assert throttle.failure("500", 1.0) is None
    assert throttle.failure("malformed", 2.0) == 1
    assert throttle.failure("malformed", 3.0) is None


def test_throttle_alternating_failures_do_not_log_every_time() -> None:
    throttle = FailureThrottle(first_quiet=60)
    logged = [throttle.failure("ab"[t % 2], float(t)) for t in range(50)]
    assert sum(1 for c in logged if c is not None) == 2


def test_throttle_success_resets_and_returns_the_failure_count() -> None:
    throttle = FailureThrottle()
    for t in range(5):
        throttle.failure("k", float(t))
    assert throttle.failing
    assert throttle.success() == 5
    assert not throttle.failing
    assert throttle.success() == 0
    assert throttle.failure("k", 6.0) == 1  # news again after a success


def test_throttle_memory_is_capped() -> None:
    throttle = FailureThrottle(max_keys=4)
    for i in range(100):
        throttle.failure(f"k{i}", 0.0)
    assert len(throttle._keys) == 4


def test_error_key_is_type_and_message() -> None:
    assert error_key(ValueError("boom")) == "ValueError: boom"
