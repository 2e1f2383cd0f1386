"""Any input is either accepted or rejected with InvalidIdentity, never another error."""

from __future__ import annotations

import base64
import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.identity.aws import load_keys, verify_aws
from controlplane.identity.azure import verify_azure
from controlplane.identity.errors import InvalidIdentity
from controlplane.identity.google import verify_google

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
AWS_KEYS = load_keys()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_azure_garbage(data: bytes) -> None:
    try:
        verify_azure(base64.b64encode(data).decode(), roots=[], now=NOW)
    except InvalidIdentity:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_azure_truncated_der_prefixes(data: bytes) -> None:
    # A SignedData header followed by junk exercises the parser deeper than random bytes.
    prefix = bytes.fromhex("3082ffff06092a864886f70d010702a082fff0")
    try:
        verify_azure(base64.b64encode(prefix + data).decode(), roots=[], now=NOW)
    except InvalidIdentity:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=()), max_size=300))
def test_google_garbage(token: str) -> None:
    try:
        verify_google(token, {}, audience="coder", now=0.0)
    except InvalidIdentity:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(exclude_categories=()), max_size=300),
    st.text(st.characters(exclude_categories=()), max_size=300),
)
def test_aws_garbage(document: str, signature: str) -> None:
    try:
        verify_aws(document, signature, AWS_KEYS)
    except InvalidIdentity:
        pass


def test_lone_surrogates_are_rejected_cleanly() -> None:
    for call in (
        lambda: verify_aws("\ud800", "AAAA", AWS_KEYS),
        lambda: verify_google("\ud800.\ud800.\ud800", {}, audience="coder", now=0.0),
        lambda: verify_azure("\ud800", roots=[], now=NOW),
    ):
        try:
            call()
        except InvalidIdentity:
            continue
        raise AssertionError("accepted garbage")
