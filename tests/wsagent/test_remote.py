"""The user commands' pure parts: credential resolution, the session file, --tcp specs,
refusal lines, and the managed ssh_config block."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from wsagent.remote.portforward import Forward
from wsagent.remote.session import (
    CliError,
    Credentials,
    config_dir,
    load_session,
    resolve,
    save_session,
)
from wsagent.remote.sshconfig import (
    END,
    START,
    HostEntry,
    known_hosts_line,
    proxy_command,
    render_block,
    replace_block,
    upsert_known_host,
)
from wsagent.remote.stream import refusal, stream_url


def test_flags_beat_coder_variables_beat_the_session_file(tmp_path: Path) -> None:
    env = {"WSAGENT_CONFIG_DIR": str(tmp_path)}
    save_session(tmp_path / "session", Credentials("https://saved.example", "saved-token"))
    assert resolve(None, None, env) == Credentials("https://saved.example", "saved-token")
    env |= {"CODER_URL": "https://env.example/", "CODER_SESSION_TOKEN": "env-token"}
    assert resolve(None, None, env) == Credentials("https://env.example", "env-token")
    assert resolve("http://flag.example", None, env) == Credentials(
        "http://flag.example", "env-token"
    )
    assert resolve(None, "flag-token", env).token == "flag-token"


def test_missing_url_or_token_says_how_to_fix_it(tmp_path: Path) -> None:
    env = {"WSAGENT_CONFIG_DIR": str(tmp_path)}
    with pytest.raises(CliError, match="no control plane URL: pass --url, set CODER_URL"):
        resolve(None, "t", env)
    with pytest.raises(CliError, match="not logged in: pass --token"):
        resolve("https://x.example", None, env)
    with pytest.raises(CliError, match="must be http"):
        resolve("ftp://x.example", "t", env)


def test_session_file_is_private_and_others_readable_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "session"
    save_session(path, Credentials("https://a.example", "tok"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_session(path) == {"url": "https://a.example", "token": "tok"}
    path.chmod(0o640)
    with pytest.raises(CliError, match="accessible by others"):
        load_session(path)
    path.chmod(0o600)
    path.write_text("[1, 2]")
    with pytest.raises(CliError, match="damaged"):
        load_session(path)
    assert load_session(tmp_path / "absent") == {}


def test_config_dir_defaults() -> None:
    assert config_dir({"HOME": "/h"}) == Path("/h/.config/wsagent")
    assert config_dir({"HOME": "/h", "XDG_CONFIG_HOME": "/x"}) == Path("/x/wsagent")
    assert config_dir({"WSAGENT_CONFIG_DIR": "/w"}) == Path("/w")


@pytest.mark.parametrize(
    ("spec", "forward"),
    [
        ("8080:80", Forward("127.0.0.1", 8080, 80)),
        ("0.0.0.0:8080:80", Forward("0.0.0.0", 8080, 80)),
        ("[::1]:0:22", Forward("::1", 0, 22)),
    ],
)
def test_tcp_specs(spec: str, forward: Forward) -> None:
    assert Forward.parse(spec) == forward


@pytest.mark.parametrize("spec", ["8080", "8080:0", "8080:65536", "x:80", ":80", "8080:"])
def test_bad_tcp_specs(spec: str) -> None:
    with pytest.raises(CliError, match="--tcp"):
        Forward.parse(spec)


def test_refusals_are_one_clear_line() -> None:
    closed = (
        b'{"message":"Failed to connect to tcp:9 in the workspace.",'
        b'"detail":"port 9 is closed in the workspace (...)"}'
    )
    assert refusal(502, closed, "tcp:9") == "port 9 is closed in the workspace (...)"
    offline = (
        b'{"message":"Agent state is \\"disconnected\\", it must be in the \\"connected\\" state."}'
    )
    assert refusal(400, offline, "ssh").startswith("agent offline: Agent state is")
    assert refusal(404, b"{}", "ssh").startswith("forbidden or unknown agent")
    assert "run wsagent login" in refusal(401, b"{}", "ssh")
    assert refusal(500, b"<html>", "ssh") == "cannot open ssh: status 500"


def test_stream_url() -> None:
    assert (
        stream_url("https://c.example/base", "a-b", "tcp:80")
        == "wss://c.example/base/api/v2/workspaceagents/a-b/stream?target=tcp%3A80"
    )


BLOCK = render_block(
    [HostEntry("wsagent.dev", "dev")], ["/opt/py thon", "-m", "wsagent"], "http://h:1/%x", "/k h"
)


def test_block_quotes_for_the_shell_and_escapes_percent() -> None:
    assert BLOCK.startswith(START + "\n")
    assert BLOCK.endswith(END + "\n")
    assert "Host wsagent.dev\n" in BLOCK
    assert (
        "  ProxyCommand '/opt/py thon' -m wsagent ssh --stdio --url http://h:1/%%x dev\n" in BLOCK
    )
    assert '  UserKnownHostsFile "/k h"\n' in BLOCK
    assert "  StrictHostKeyChecking yes\n" in BLOCK
    assert proxy_command(["w"], "u", "a b") == "w ssh --stdio --url u 'a b'"


def test_block_is_appended_once_then_replaced_in_place() -> None:
    user = "Host work\n  User me\n\n# my notes\nHost *\n  ServerAliveInterval 30"
    first = replace_block(user, BLOCK)
    assert first.startswith(user + "\n\n" + START)
    newer = BLOCK.replace("wsagent.dev", "wsagent.web")
    second = replace_block(first + "Host later\n  Port 2\n", newer)
    assert second == user + "\n\n" + newer + "Host later\n  Port 2\n"
    assert replace_block(second, newer) == second
    assert replace_block("", BLOCK) == BLOCK


def test_unbalanced_markers_are_refused() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        replace_block(f"{START}\nHost x\n", BLOCK)
    with pytest.raises(ValueError, match="unbalanced"):
        replace_block(f"{END}\n{START}\n", BLOCK)


def test_known_hosts_lines() -> None:
    key = "ssh-ed25519 AAAAC3Nz wsagent@host"
    assert known_hosts_line("wsagent.dev", key) == "wsagent.dev ssh-ed25519 AAAAC3Nz"
    text = upsert_known_host("other ssh-rsa B\nwsagent.dev ssh-ed25519 OLD\n", "wsagent.dev", key)
    assert text == "other ssh-rsa B\nwsagent.dev ssh-ed25519 AAAAC3Nz\n"
    with pytest.raises(ValueError):
        known_hosts_line("x", "garbage")
