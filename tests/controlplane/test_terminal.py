"""Pure parts of the ``wsagent terminal`` client."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from controlplane.terminal import exit_status, pty_url


def test_pty_url_maps_scheme_and_query() -> None:
    url = pty_url("https://cp.example.com/base/", "a-1", "r-2", 30, 100, "htop -d 5")
    parts = urlsplit(url)
    assert parts.scheme == "wss"
    assert parts.path == "/base/api/v2/workspaceagents/a-1/pty"
    assert parse_qs(parts.query) == {
        "reconnect": ["r-2"],
        "height": ["30"],
        "width": ["100"],
        "command": ["htop -d 5"],
    }
    plain = urlsplit(pty_url("http://127.0.0.1:3000", "a", "r", 24, 80, ""))
    assert plain.scheme == "ws"
    assert "command" not in parse_qs(plain.query)


def test_exit_status_from_the_close() -> None:
    assert exit_status(1000, "process exited with code 3") == 3
    assert exit_status(1000, "process exited with code 0") == 0
    assert exit_status(1000, "process exited with code 300") == 255
    assert exit_status(1000, "") == 0
    assert exit_status(1013, "terminal session limit reached") == 1
    assert exit_status(None, "connection lost") == 1
