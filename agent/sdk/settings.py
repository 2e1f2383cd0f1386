"""Parsers for setting values, shared by the agent and the control plane.

Pure: each takes the text and the name of the setting it came from, and returns the value
or raises :class:`ConfigError` naming that setting.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from agent.sdk.errors import ConfigError

MIB: Final = 1 << 20

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str, setting: str) -> float:
    """Parse a Go-style duration ("1m30s", "250ms") or plain seconds ("2.5") to seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = _parse_go_duration(text, setting)
    if value < 0:
        raise ConfigError(setting, "duration must not be negative")
    return value


def _parse_go_duration(text: str, setting: str) -> float:
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ConfigError(setting, f"invalid duration {text!r} (examples: 30s, 5m, 250ms)")
    return total


def parse_size(text: str, setting: str) -> int:
    """Parse a byte size: "5242880", "5MiB", "512KiB", "1GiB"."""
    m = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*", text)
    if not m:
        raise ConfigError(setting, f"invalid size {text!r} (examples: 5MiB, 262144)")
    scale = {None: 1, "B": 1, "K": 1 << 10, "KiB": 1 << 10, "M": MIB, "MiB": MIB}
    scale |= {"G": 1 << 30, "GiB": 1 << 30}
    return int(m.group(1)) * scale[m.group(2)]


def parse_bool(text: str, setting: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(setting, f"invalid boolean {text!r}")


def parse_listen_address(text: str, setting: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port`` too) to listen on; empty or ``off`` means disabled."""
    text = text.strip()
    if text.lower() in ("", "off", "false", "no", "0"):
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(setting, f"expected host:port or off, got {text!r}")
    return host, int(port_text)


def validate_url(text: str, setting: str) -> str:
    if not text:
        raise ConfigError(
            setting, "is required (the control plane's URL, e.g. https://coder.example.com)"
        )
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(setting, f"must be an http:// or https:// URL, got {text!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(setting, f"invalid port in {text!r}") from None
    if not parts.hostname:
        raise ConfigError(setting, f"has no host: {text!r}")
    del port
    return text.rstrip("/")
