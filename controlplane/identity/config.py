"""Instance-identity verification settings (placeholder until the identity work lands)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass
class IdentityConfig:
    pass


def add_identity_flags(parser: argparse.ArgumentParser) -> None:
    del parser


def identity_config_from_args(args: argparse.Namespace) -> IdentityConfig:
    del args
    return IdentityConfig()
