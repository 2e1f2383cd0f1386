"""The control plane's commands as a new user meets them: every mistake is one line naming
the address or path involved, exit non-zero, nothing left behind; help is there and
readable; the server says which data directory it uses; ``demo --keep`` says where."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import pytest

from controlplane.admin_cli import admin_parser
from tests.conftest import REPO
from tests.e2e.controlplane.cli import cli_env, wsagent

pytestmark = pytest.mark.e2e


async def _run(*args: str, env: dict[str, str] | None = None, stdin: int | None = None):  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        *args,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
        cwd=str(REPO),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_terminal_url_without_scheme_and_stdin_not_a_terminal() -> None:
    agent = "2b9b6b75-7481-4703-8b70-371a9c7e15e6"
    code, out, err = await _run(
        "terminal", "--url", "127.0.0.1:3000", "--token", "t", "--agent", agent
    )
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "wsagent terminal: error: --url '127.0.0.1:3000' is not an http:// or https:// URL"
        " (for example http://127.0.0.1:3000)"
    ]
    with open("/dev/null", "rb") as devnull:
        code, out, err = await _run(
            "terminal",
            "--url",
            "http://127.0.0.1:3000",
            "--token",
            "t",
            "--agent",
            agent,
            stdin=devnull.fileno(),
        )
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "wsagent terminal: error: standard input (/dev/null) is not a terminal; run it in a"
        " terminal, or pipe keys into it"
    ]


async def test_demo_on_a_busy_port_is_one_line_and_leaves_no_temp_dir(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = await _run(
            "demo", "--address", f"127.0.0.1:{port}", env={**cli_env(), "TMPDIR": str(temp)}
        )
    assert code == 1
    assert err.splitlines() == [
        f"wsagent demo: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert "Traceback" not in out + err
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize("command", ["server", "demo"])
async def test_a_bad_address_is_one_line_without_the_usage(command: str) -> None:
    code, out, err = await _run(command, "--address", "3000")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"wsagent {command}: error: argument --address: expected HOST:PORT, got '3000'"
        f" (see wsagent {command} --help)"
    ]


async def test_a_data_directory_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "data"
    a_file.write_text("")
    code, _, err = await _run("server", "--address", "127.0.0.1:0", "--data-dir", str(a_file))
    assert code == 1
    assert err.splitlines() == [
        f"wsagent server: error: data directory {a_file} is not a directory"
    ]


async def test_gitssh_help_and_demo_help() -> None:
    code, out, _ = await _run("gitssh", "--help")
    assert code == 0 and out.startswith("usage: wsagent gitssh")
    code, out, _ = await _run("demo", "--help")
    assert code == 0 and "usage: wsagent demo" in out
    assert "``" not in out and "`" not in out


def test_every_admin_flag_has_help() -> None:
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(admin_parser(), "admin")
    assert missing == []


async def test_server_logs_its_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "server",
        "--address",
        "127.0.0.1:0",
        "--metrics-address",
        "off",
        "--data-dir",
        str(data),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
        cwd=str(REPO),
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            while True:
                line = await proc.stdout.readline()
                assert line, "the server exited before listening"
                event = json.loads(line)
                if event["event"] == "server.listening":
                    break
        assert event["data_dir"] == str(data)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0


async def test_demo_keep_says_where_the_data_is(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "demo",
        "--keep",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**cli_env(), "TMPDIR": str(temp)},
        cwd=str(REPO),
        start_new_session=True,
    )
    assert proc.stdout is not None
    text = ""
    try:
        async with asyncio.timeout(40):
            while "Press Ctrl-C to stop." not in text:
                line = await proc.stdout.readline()
                assert line, f"demo exited early:\n{text}"
                text += line.decode()
        assert "--reconnect last" in text
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 20)
    (kept,) = temp.iterdir()
    assert rest.decode().strip().splitlines()[-1] == f"demo stopped; its data is kept in {kept}"
    assert (kept / "server").is_dir()


async def test_admin_json_flag_after_the_command(tmp_path: Path) -> None:
    result = await wsagent("admin", "--data-dir", str(tmp_path), "user", "create", "ann", "--json")
    assert result.code == 0 and result.json["name"] == "ann"
