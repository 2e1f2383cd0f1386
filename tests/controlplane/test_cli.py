"""``wsagent server`` flags (pure: argument parsing into ServerConfig)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from controlplane.cli import server_config_from_args, server_parser
from controlplane.cliargs import parse_address
from controlplane.config import ServerConfig


def config(*argv: str) -> ServerConfig:
    result: ServerConfig = server_config_from_args(server_parser().parse_args(list(argv)))
    return result


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WSAGENT_DATA_DIR", str(tmp_path))
    c = config()
    assert (c.host, c.port) == ("127.0.0.1", 3000)
    assert c.data_dir == tmp_path
    assert c.resolved_access_url() == "http://127.0.0.1:3000"
    assert (c.stats_report_interval, c.agent_heartbeat_interval) == (600.0, 3.0)
    assert c.durability == "normal" and c.tls_cert is None


def test_every_flag(tmp_path: Path) -> None:
    c = config(
        "--address", "[::1]:8443", "--data-dir", str(tmp_path), "--access-url",
        "https://coder.example.com/", "--wildcard-access-url", "*.apps.example.com",
        "--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--stats-interval", "30s",
        "--heartbeat-interval", "1.5s",
    )  # fmt: skip
    assert (c.host, c.port) == ("::1", 8443)
    assert c.resolved_access_url() == "https://coder.example.com"
    assert c.wildcard_access_url == "*.apps.example.com"
    assert (c.tls_cert, c.tls_key) == (Path("/c.pem"), Path("/k.pem"))
    assert (c.stats_report_interval, c.agent_heartbeat_interval, c.inactive_timeout) == (
        30.0,
        1.5,
        3.0,
    )


def test_tls_url_without_access_url() -> None:
    c = config("--address", "0.0.0.0:443", "--tls-cert", "/c.pem", "--tls-key", "/k.pem")
    assert c.resolved_access_url() == "https://0.0.0.0:443"


@pytest.mark.parametrize("text", ["3000", "host:", "host:99999", "host:x"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_address(text)


def test_tls_cert_needs_a_key() -> None:
    with pytest.raises(SystemExit, match="--tls-key is required"):
        config("--tls-cert", "/c.pem")
