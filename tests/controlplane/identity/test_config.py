"""``wsagent server`` identity flags -> IdentityConfig."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from controlplane.identity.config import add_identity_flags, identity_config_from_args
from tests.fakes.cloudkeys import make_aws_material


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_identity_flags(parser)
    return parser.parse_args(argv)


def test_defaults_verify_real_clouds() -> None:
    config = identity_config_from_args(_parse([]))
    assert config.aws_default_certs and not config.aws_extra_certs
    assert config.google_audience == "coder"
    assert config.google_keys_url == "https://www.googleapis.com/oauth2/v3/certs"
    assert config.azure_roots == ()  # system trust store
    assert config.azure_aia_hosts == {
        "www.microsoft.com",
        "caissuers.microsoft.com",
        "cacerts.digicert.com",
    }
    assert not config.aws_allowed_accounts and not config.azure_require_nonce


def test_flags(tmp_path: Path) -> None:
    cert = tmp_path / "aws.pem"
    cert.write_text(make_aws_material().cert_pem)
    config = identity_config_from_args(
        _parse(
            [
                "--aws-cert", str(cert), "--aws-no-default-certs",
                "--aws-allowed-accounts", "111,222", "--aws-allowed-accounts", "333",
                "--google-audience", "https://cp.example", "--google-allowed-projects", "p1",
                "--google-keys-file", str(tmp_path / "keys.json"),
                "--azure-allowed-subscriptions", "s1", "--azure-max-age", "60",
                "--azure-require-nonce", "--azure-aia-hosts", "",
            ]
        )
    )  # fmt: skip
    assert not config.aws_default_certs
    assert config.aws_extra_certs == (cert.read_text(),)
    assert config.aws_allowed_accounts == {"111", "222", "333"}
    assert config.google_audience == "https://cp.example"
    assert config.google_allowed_projects == {"p1"}
    assert config.google_keys_file == tmp_path / "keys.json"
    assert config.azure_allowed_subscriptions == {"s1"}
    assert config.azure_max_age == 60 and config.azure_require_nonce
    assert config.azure_aia_hosts == frozenset()


def test_a_file_without_a_certificate_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello")
    with pytest.raises(SystemExit, match=r"--azure-root .*no PEM certificate"):
        identity_config_from_args(_parse(["--azure-root", str(bad)]))
