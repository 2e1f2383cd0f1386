"""Instance-identity verification settings, and the ``wsagent server`` flags that set them.

Defaults verify real clouds: AWS's published keys (shipped), Google's published keys
(fetched and cached), Azure chains to the system trust store. Everything an operator may
need to narrow (allow-lists) or redirect (air-gapped key file, private roots) is here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from controlplane.identity.aia import DEFAULT_AIA_HOSTS
from controlplane.identity.google_keys import DEFAULT_KEYS_URL


@dataclass
class IdentityConfig:
    # AWS
    aws_default_certs: bool = (
        True  # AWS's published regional keys (controlplane/identity/aws_certs.py)
    )
    aws_extra_certs: tuple[str, ...] = ()  # PEM texts; keys valid for any region
    aws_allowed_accounts: frozenset[str] = frozenset()  # empty: any account (say so in docs!)
    aws_allowed_regions: frozenset[str] = frozenset()
    # Google
    google_audience: str = "coder"
    google_keys_url: str = DEFAULT_KEYS_URL
    google_keys_file: Path | None = None  # air-gapped: a saved JWKS or v1 PEM map
    google_allowed_projects: frozenset[str] = frozenset()  # project ids or numbers
    google_leeway: float = 60.0  # clock skew tolerated on exp/iat, seconds
    # Azure
    azure_roots: tuple[str, ...] = ()  # PEM texts; empty: the system trust store
    azure_intermediates: tuple[str, ...] = ()  # PEM texts added to those in the document
    azure_allowed_subscriptions: frozenset[str] = frozenset()
    azure_max_age: float = 3600.0  # reject documents created longer ago than this, seconds
    azure_require_nonce: bool = False  # accept only documents carrying a nonce we issued
    azure_nonce_ttl: float = 300.0
    azure_aia_hosts: frozenset[str] = DEFAULT_AIA_HOSTS  # where issuing CAs may be fetched


def _csv(values: list[str]) -> frozenset[str]:
    return frozenset(v.strip() for item in values for v in item.split(",") if v.strip())


def _read_pems(paths: list[Path], flag: str) -> tuple[str, ...]:
    texts = []
    for path in paths:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SystemExit(f"wsagent server: error: {flag} {path}: {exc}") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise SystemExit(f"wsagent server: error: {flag} {path}: no PEM certificate")
        texts.append(text)
    return tuple(texts)


def add_identity_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cloud instance identity")
    add = g.add_argument
    add(
        "--aws-cert",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="extra AWS instance-identity certificate (a region AWS added later); repeatable",
    )
    add(
        "--aws-no-default-certs",
        action="store_true",
        help="trust only --aws-cert, not the AWS keys shipped with wsagent",
    )
    add(
        "--aws-allowed-accounts",
        action="append",
        default=[],
        metavar="IDS",
        help="comma-separated AWS account ids allowed to authenticate (default: any)",
    )
    add(
        "--aws-allowed-regions",
        action="append",
        default=[],
        metavar="REGIONS",
        help="comma-separated AWS regions allowed (default: any)",
    )
    add(
        "--google-audience",
        default="coder",
        help="audience the agents request and the server requires (default: coder)",
    )
    add(
        "--google-keys-url",
        default=DEFAULT_KEYS_URL,
        help="Google's signing keys: JWKS or v1 {kid: PEM} URL",
    )
    add(
        "--google-keys-file",
        type=Path,
        default=None,
        help="read Google's signing keys from this file instead (air-gapped installs)",
    )
    add(
        "--google-allowed-projects",
        action="append",
        default=[],
        metavar="PROJECTS",
        help="comma-separated GCP project ids or numbers allowed (default: any)",
    )
    add(
        "--azure-root",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="trusted root for Azure attested documents (default: system trust store)",
    )
    add(
        "--azure-intermediate",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="Azure issuing CA certificate(s) to build chains with; repeatable",
    )
    add(
        "--azure-aia-hosts",
        default=",".join(sorted(DEFAULT_AIA_HOSTS)),
        metavar="HOSTS",
        help="hosts the signer's issuing CA may be fetched from (AIA); empty disables "
        "(default: %(default)s)",
    )
    add(
        "--azure-allowed-subscriptions",
        action="append",
        default=[],
        metavar="IDS",
        help="comma-separated Azure subscription ids allowed (default: any)",
    )
    add(
        "--azure-max-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="reject attested documents created longer ago (default 3600)",
    )
    add(
        "--azure-require-nonce",
        action="store_true",
        help="accept only attested documents carrying a nonce this server issued",
    )


def identity_config_from_args(args: argparse.Namespace) -> IdentityConfig:
    return IdentityConfig(
        aws_default_certs=not args.aws_no_default_certs,
        aws_extra_certs=_read_pems(args.aws_cert, "--aws-cert"),
        aws_allowed_accounts=_csv(args.aws_allowed_accounts),
        aws_allowed_regions=_csv(args.aws_allowed_regions),
        google_audience=args.google_audience,
        google_keys_url=args.google_keys_url,
        google_keys_file=args.google_keys_file,
        google_allowed_projects=_csv(args.google_allowed_projects),
        azure_roots=_read_pems(args.azure_root, "--azure-root"),
        azure_intermediates=_read_pems(args.azure_intermediate, "--azure-intermediate"),
        azure_allowed_subscriptions=_csv(args.azure_allowed_subscriptions),
        azure_max_age=args.azure_max_age,
        azure_require_nonce=args.azure_require_nonce,
        azure_aia_hosts=_csv([args.azure_aia_hosts]),
    )
