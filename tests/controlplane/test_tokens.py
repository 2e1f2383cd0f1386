"""Secret tokens of the control plane."""

from __future__ import annotations


def test_tokens_never_look_like_flags() -> None:
    """Tokens go on command lines (`wsagent terminal --token ...`): none may start with '-'."""
    from controlplane.tokens import new_token, well_formed

    tokens = [new_token() for _ in range(2000)]
    assert all(t[0] != "-" and well_formed(t) and len(t) >= 43 for t in tokens)
    assert len(set(tokens)) == len(tokens)
