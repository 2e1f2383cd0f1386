"""Which git-auth provider ids the admin accepts. Pure."""

from __future__ import annotations

import pytest

from controlplane.admin import SpecError, check_gitauth_provider
from controlplane.store.records import GitAuthProvider


@pytest.mark.parametrize("provider_id", ["github", "gitlab.example-1", "a", "A" * 64])
def test_ordinary_ids_are_accepted(provider_id: str) -> None:
    check_gitauth_provider(GitAuthProvider(provider_id, r"github\.com", "github"), "p")


@pytest.mark.parametrize("provider_id", ["", "-x", "a/b", "a b", "A" * 65, "x" * 9000])
def test_ids_that_cannot_be_a_path_segment_or_a_notify_payload_are_refused(
    provider_id: str,
) -> None:
    with pytest.raises(SpecError) as raised:
        check_gitauth_provider(GitAuthProvider(provider_id, r"github\.com", "github"), "p")
    assert len(str(raised.value)) < 300  # the refusal quotes a bounded part of the id
