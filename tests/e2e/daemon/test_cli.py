"""The ``wsagent agent`` command line: a bad or missing setting is one line naming it, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

BASE = {k: v for k, v in os.environ.items() if not k.startswith("CODER_")}
GOOD = {"CODER_AGENT_URL": "http://127.0.0.1:1", "CODER_AGENT_TOKEN": "x" * 36}


def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsagent", *argv],
        env={**BASE, **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "argv", "setting"),
    [
        ({}, (), "CODER_AGENT_URL"),
        ({**GOOD, "CODER_AGENT_URL": "ftp://example.com"}, (), "CODER_AGENT_URL"),
        ({**GOOD, "CODER_AGENT_URL": "http://:80"}, (), "CODER_AGENT_URL"),
        ({**GOOD, "CODER_AGENT_URL": "http://host:99999"}, (), "CODER_AGENT_URL"),
        ({**GOOD, "CODER_AGENT_AUTH": "kerberos"}, (), "CODER_AGENT_AUTH"),
        ({**GOOD, "CODER_AGENT_AUTH": "token", "CODER_AGENT_TOKEN": ""}, (), "CODER_AGENT_TOKEN"),
        ({**GOOD, "CODER_AGENT_LOG_DIR": "/etc/hostname"}, (), "CODER_AGENT_LOG_DIR"),
        ({**GOOD, "CODER_AGENT_SHUTDOWN_GRACE": "soon"}, (), "CODER_AGENT_SHUTDOWN_GRACE"),
        ({**GOOD, "CODER_AGENT_RECONNECT_MAX_DELAY": "0s"}, (), "CODER_AGENT_RECONNECT_MAX_DELAY"),
        ({**GOOD, "CODER_AGENT_LOG_MAX_SIZE": "lots"}, (), "CODER_AGENT_LOG_MAX_SIZE"),
        (GOOD, ("--bogus",), "--bogus"),
        (GOOD, ("--agent-url",), "--agent-url"),
    ],
)
def test_bad_setting_is_one_line_naming_it_and_exit_2(
    env: dict[str, str], argv: tuple[str, ...], setting: str
) -> None:
    result = run("agent", *argv, **env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wsagent agent: error: ")
    assert setting in lines[0]
    assert result.stdout == ""


def test_unwritable_log_dir_is_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "blocker").write_text("")
    result = run("agent", **GOOD, CODER_AGENT_LOG_DIR=str(tmp_path / "blocker" / "sub"))
    assert result.returncode == 2
    assert "CODER_AGENT_LOG_DIR" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_version_prints_v_semver() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("wsagent v")
