"""Pure logic of workspace start: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent import gitaskpass, gitssh, lifecycle, motd, scriptlog, sessionenv, startup, vscode
from agent.clock import SYSTEM_CLOCK
from agent.gitaskpass import AskpassError, Credential
from agent.sdk.errors import WsagentError
from agent.sdk.models import Metadata
from tests.fakes.clock import FakeClock

# ---------------------------------------------------------------- askpass


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["Username for 'https://github.com': "], {"GIT_PREFIX": ""}, True),
        (["Password for 'https://u@github.com': "], {"GIT_PREFIX": "sub/"}, True),
        (["Username for 'https://github.com': "], {}, False),  # not run by git
        (["Username for 'https://github.com': ", "x"], {"GIT_PREFIX": ""}, False),
        (["agent"], {"GIT_PREFIX": ""}, False),
        (["Usernames"], {"GIT_PREFIX": ""}, False),
    ],
)
def test_is_askpass(argv: list[str], env: dict[str, str], expected: bool) -> None:
    assert gitaskpass.is_askpass(argv, env) is expected


@pytest.mark.parametrize(
    ("prompt", "user", "url"),
    [
        ("Username for 'https://github.com': ", "", "https://github.com"),
        ("Password for 'https://alice@github.com': ", "alice", "https://github.com"),
        ("Username for 'http://127.0.0.1:8080': ", "", "http://127.0.0.1:8080"),
        (
            "Password for 'https://a%40b@git.example.com/org': ",
            "a@b",
            "https://git.example.com/org",
        ),
        ('Username for "https://gitlab.com":', "", "https://gitlab.com"),
    ],
)
def test_parse_prompt(prompt: str, user: str, url: str) -> None:
    assert gitaskpass.parse_prompt(prompt) == (user, url)


@pytest.mark.parametrize(
    "prompt",
    ["Username", "Username for", "Username for 'ssh://host': ", "Password for 'https://': "],
)
def test_parse_prompt_rejects(prompt: str) -> None:
    with pytest.raises(AskpassError):
        gitaskpass.parse_prompt(prompt)


def test_answer() -> None:
    token_only = Credential(username="tok")
    assert gitaskpass.answer("", token_only) == "tok"
    assert gitaskpass.answer("tok", token_only) == "tok"
    pair = Credential(username="oauth2", password="secret")
    assert gitaskpass.answer("", pair) == "oauth2"
    assert gitaskpass.answer("oauth2", pair) == "secret"


def test_poll_delays_double_to_ceiling() -> None:
    next_delay = gitaskpass.poll_delays()
    assert [next_delay() for _ in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_askpass_deadline_setting() -> None:
    assert gitaskpass.deadline_seconds({}) == 300.0
    assert gitaskpass.deadline_seconds({"CODER_AGENT_GIT_ASKPASS_DEADLINE": "2m"}) == 120.0
    with pytest.raises(WsagentError):
        gitaskpass.deadline_seconds({"CODER_AGENT_GIT_ASKPASS_DEADLINE": "soon"})


class _ScriptedClient:
    """Answers git_auth calls from a list; records them. Stands in for the HTTP layer only."""

    def __init__(self, answers: list[tuple[int, dict[str, str]] | Exception]) -> None:
        self.answers = answers
        self.calls: list[bool] = []

    def git_auth(self, url: str, *, listen: bool, timeout: float) -> tuple[int, dict[str, str]]:
        self.calls.append(listen)
        item = self.answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_fetch_credential_polls_listen_with_backoff(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    client = _ScriptedClient(
        [
            (200, {"url": "http://cp/gitauth/gh"}),
            AskpassError("connection refused"),
            (500, {"message": "boom"}),
            (200, {"username": "tok"}),
        ]
    )
    clock = _FakeClock()
    got = gitaskpass.fetch_credential(
        client,  # type: ignore[arg-type]
        "https://github.com",
        deadline=100.0,
        stderr=sys.stderr,
        clock=clock,
        sleep=clock.sleep,
    )
    assert got == Credential(username="tok")
    assert client.calls == [False, True, True, True]
    assert clock.sleeps == [0.25, 0.5]
    err = capsys.readouterr().err
    assert "http://cp/gitauth/gh" in err
    assert len(err.strip().splitlines()) == 2


def test_fetch_credential_gives_up_at_deadline() -> None:
    import io

    client = _ScriptedClient([(200, {"url": "http://cp/gitauth/gh"})] + [AskpassError("down")] * 50)
    clock = _FakeClock()
    with pytest.raises(AskpassError, match=r"timed out.*down"):
        gitaskpass.fetch_credential(
            client,  # type: ignore[arg-type]
            "https://x",
            deadline=5.0,
            stderr=io.StringIO(),
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == pytest.approx(5.0)


def test_fetch_credential_404_message() -> None:
    import io

    client = _ScriptedClient([(404, {"message": 'No git provider found for URL "https://x"'})])
    with pytest.raises(AskpassError, match="No git provider found"):
        gitaskpass.fetch_credential(client, "https://x", deadline=5.0, stderr=io.StringIO())  # type: ignore[arg-type]


# ---------------------------------------------------------------- session environment


def _metadata(**kw: object) -> Metadata:
    return Metadata(**kw)  # type: ignore[arg-type]


def test_session_environment_order_and_expansion() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/u", "CODER": "no", "CODER_AGENT_TOKEN": "old"}
    md = _metadata(
        vscode_port_proxy_uri="https://{{port}}.example",
        environment_variables={
            "DATA": "$HOME/data",
            "BRACED": "${HOME}-x",
            "UNSET": "a$NOPE",
            "GIT_ASKPASS": "template-cannot-win",
            "CODER": "template-wins",
        },
    )
    env = sessionenv.session_environment(md, "tok-new", "/opt/ws/bin/wsagent", base=base, user="u")
    assert env["CODER"] == "template-wins"
    assert env["USER"] == "u"
    assert env["CODER_AGENT_TOKEN"] == "tok-new"
    assert env["GIT_SSH_COMMAND"] == "/opt/ws/bin/wsagent gitssh --"
    assert env["GIT_ASKPASS"] == "/opt/ws/bin/wsagent"
    assert env["VSCODE_PROXY_URI"] == "https://{{port}}.example"
    assert env["DATA"] == "/home/u/data"
    assert env["BRACED"] == "/home/u-x"
    assert env["UNSET"] == "a"
    assert env["PATH"] == "/usr/bin:/opt/ws/bin"
    assert base["CODER"] == "no"  # the agent's own environment is not modified


def test_session_environment_quotes_executable_for_the_shell() -> None:
    env = sessionenv.session_environment(_metadata(), "t", "/a b/wsagent", base={}, user="u")
    assert env["GIT_SSH_COMMAND"] == "'/a b/wsagent' gitssh --"


def test_working_directory(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    env = {"HOME": str(tmp_path), "P": "proj"}
    assert sessionenv.working_directory(_metadata(directory="~/proj"), env) == str(
        tmp_path / "proj"
    )
    assert sessionenv.working_directory(_metadata(directory="$HOME/$P"), env) == str(
        tmp_path / "proj"
    )
    assert sessionenv.working_directory(_metadata(directory="~/nope"), env) == str(tmp_path)
    assert sessionenv.working_directory(_metadata(directory=""), env) == str(tmp_path)
    assert sessionenv.working_directory(_metadata(), {"HOME": str(tmp_path / "gone")}) == "/"


def test_wsagent_executable(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "wsagent"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    python = str(tmp_path / "bin" / "python")
    assert sessionenv.wsagent_executable(str(script), "/nowhere/python", "") == str(script)
    assert sessionenv.wsagent_executable("/x/__main__.py", python, "") == str(script)
    assert sessionenv.wsagent_executable(
        "/x/__main__.py", "/nowhere/python", str(script.parent)
    ) == str(script)
    assert (
        sessionenv.wsagent_executable("/x/__main__.py", "/nowhere/python", "/nowhere") == "wsagent"
    )


# ---------------------------------------------------------------- log capping


def test_capped_log_passes_small_output() -> None:
    cap = scriptlog.CappedLog(8192)
    assert cap.feed(b"hello\n") == b"hello\n"
    assert cap.finish() == b""


def test_capped_log_drops_and_says_so() -> None:
    cap = scriptlog.CappedLog(8192)
    out = b""
    total = 0
    for _ in range(100):
        chunk = b"x" * 1000
        total += len(chunk)
        out += cap.feed(chunk)
    out += cap.finish()
    assert len(out) <= 8192
    kept = out.count(b"x")
    assert kept == 8192 - scriptlog.TRAILER_RESERVE
    assert b"\n[wsagent] startup script output reached the log limit of 8192 bytes" in out
    assert out.endswith(
        f"[wsagent] {total - kept} bytes of startup script output were dropped\n".encode()
    )
    assert out.count(b"log limit") == 1


def test_capped_log_minimum_size() -> None:
    assert scriptlog.CappedLog(10).max_bytes == scriptlog.MIN_LOG_BYTES


# ---------------------------------------------------------------- lifecycle


def test_lifecycle_happy_path_queues_every_state() -> None:
    lc = lifecycle.Lifecycle()
    lc.apply(lifecycle.START)
    lc.apply(lifecycle.TIMEOUT)
    lc.apply(lifecycle.EXITED_OK)
    assert lc.state == lifecycle.READY
    assert lc.outbox == ("starting", "start_timeout", "ready")
    lc.posted("starting")
    assert lc.pending() == "start_timeout"


@pytest.mark.parametrize(
    ("events", "bad"),
    [
        ([], lifecycle.TIMEOUT),
        ([], lifecycle.EXITED_OK),
        ([lifecycle.START], lifecycle.START),
        ([lifecycle.START, lifecycle.EXITED_OK], lifecycle.EXITED_ERROR),
        ([lifecycle.START, lifecycle.TIMEOUT], lifecycle.TIMEOUT),
    ],
)
def test_lifecycle_illegal_event_raises_and_keeps_state(events: list[str], bad: str) -> None:
    lc = lifecycle.Lifecycle()
    for event in events:
        lc.apply(event)
    before, outbox = lc.state, lc.outbox
    with pytest.raises(lifecycle.LifecycleError):
        lc.apply(bad)
    assert (lc.state, lc.outbox) == (before, outbox)


def test_lifecycle_reconnect_requeues_current_state_once() -> None:
    lc = lifecycle.Lifecycle()
    lc.reconnected()
    assert lc.pending() is None  # nothing to say before the start
    lc.apply(lifecycle.START)
    lc.apply(lifecycle.EXITED_ERROR)
    lc.posted("starting")
    lc.posted("start_error")
    lc.reconnected()
    lc.reconnected()
    assert lc.outbox == ("start_error",)


async def test_reporter_retries_with_backoff_until_posted() -> None:
    lc = lifecycle.Lifecycle()
    posts: list[str] = []
    failures = {"starting": 3}

    async def post(state: str) -> None:
        posts.append(state)
        if failures.get(state, 0) > 0:
            failures[state] -= 1
            raise WsagentError("down")

    clock = FakeClock()
    reporter = startup.LifecycleReporter(lc, post, clock=clock, rng=random.Random(1))
    lc.apply(lifecycle.START)
    lc.apply(lifecycle.EXITED_OK)
    await clock.run(reporter.flush())
    assert posts == ["starting"] * 4 + ["ready"]
    sleeps = clock.sleeps
    assert len(sleeps) == 3
    # jittered doubling from 1 s: [0.5, 1], [1, 2], [2, 4]
    for delay, (low, high) in zip(sleeps, [(0.5, 1), (1, 2), (2, 4)], strict=True):
        assert low <= delay <= high
    assert lc.pending() is None and lc.confirmed == "ready"


async def test_reporter_backoff_is_capped_at_15s() -> None:
    lc = lifecycle.Lifecycle()
    lc.apply(lifecycle.START)
    attempts = 0

    async def post(state: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 12:
            raise WsagentError("down")

    clock = FakeClock()
    await clock.run(startup.LifecycleReporter(lc, post, clock=clock).flush())
    sleeps = clock.sleeps
    assert max(sleeps) <= 15.0
    assert sleeps[-1] >= 7.5


async def test_reporter_stops_when_closed() -> None:
    lc = lifecycle.Lifecycle()
    lc.apply(lifecycle.START)

    async def post(state: str) -> None:
        raise WsagentError("down")

    clock = FakeClock()
    reporter = startup.LifecycleReporter(lc, post, clock=clock)
    flushing = asyncio.create_task(reporter.flush())
    await clock.settle()
    assert clock.sleeps  # failed once, waiting out the backoff
    reporter.stopped = True
    await clock.advance(clock.sleeps[-1])
    await asyncio.wait_for(flushing, 1)
    assert lc.pending() == "starting"


# ---------------------------------------------------------------- VS Code


def test_merge_settings_creates_and_keeps_user_keys() -> None:
    fresh = json.loads(vscode.merge_settings(None))
    assert fresh == {"git.useIntegratedAskPass": False, "github.gitAuthentication": False}
    merged = vscode.merge_settings(b'{"editor.fontSize": 14, "git.useIntegratedAskPass": true}')
    assert merged.startswith(b"{\n\t")
    assert json.loads(merged) == {
        "editor.fontSize": 14,
        "git.useIntegratedAskPass": False,
        "github.gitAuthentication": False,
    }
    with pytest.raises(vscode.SettingsError):
        vscode.merge_settings(b"[1, 2]")
    with pytest.raises(vscode.SettingsError):
        vscode.merge_settings(b"{not json")


def test_apply_overrides_writes_both_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    existing = home / ".vscode-server" / "data" / "Machine" / "settings.json"
    existing.parent.mkdir(parents=True)
    existing.write_text('{"keep": "me"}')
    vscode.apply_overrides(0, {}, str(home))
    assert existing.read_text() == '{"keep": "me"}'
    old_umask = os.umask(0o022)
    try:
        vscode.apply_overrides(1, {"XDG_DATA_HOME": str(tmp_path / "xdg")}, str(home))
    finally:
        os.umask(old_umask)
    code_server = tmp_path / "xdg" / "code-server" / "Machine" / "settings.json"
    for path in (code_server, existing):
        assert json.loads(path.read_text())["github.gitAuthentication"] is False
        assert (path.stat().st_mode & 0o777) == 0o600
    assert json.loads(existing.read_text())["keep"] == "me"
    for d in (tmp_path / "xdg" / "code-server", code_server.parent):
        assert (d.stat().st_mode & 0o777) == 0o700
    assert vscode.settings_paths({}, "/h")[0] == Path(
        "/h/.local/share/code-server/Machine/settings.json"
    )


def test_apply_overrides_leaves_broken_file_alone(tmp_path: Path) -> None:
    path = tmp_path / ".vscode-server" / "data" / "Machine" / "settings.json"
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    vscode.apply_overrides(1, {"XDG_DATA_HOME": str(tmp_path / "xdg")}, str(tmp_path))
    assert path.read_text() == "{broken"


# ---------------------------------------------------------------- MOTD


def test_motd_lines_end_with_crlf(tmp_path: Path) -> None:
    f = tmp_path / "motd"
    f.write_bytes(b"Welcome\nto the box\r\nlast line without newline")
    assert motd.motd_bytes(str(f), str(tmp_path / "home")) == (
        b"Welcome\r\nto the box\r\nlast line without newline\r\n"
    )


def test_motd_hushlogin_missing_and_empty(tmp_path: Path) -> None:
    f = tmp_path / "motd"
    f.write_text("hi\n")
    home = tmp_path / "home"
    home.mkdir()
    assert motd.motd_bytes(str(f), str(home)) == b"hi\r\n"
    assert motd.motd_bytes(str(tmp_path / "missing"), str(home)) == b""
    assert motd.motd_bytes("", str(home)) == b""
    (home / "motd").write_text("tilde\n")
    assert motd.motd_bytes("~/motd", str(home)) == b"tilde\r\n"
    (home / ".hushlogin").touch()
    assert motd.motd_bytes(str(f), str(home)) == b""


# ---------------------------------------------------------------- gitssh


def test_parse_identity_files() -> None:
    out = "user git\nidentityfile ~/.ssh/id_rsa\nIdentityFile /keys/work key\nport 22\n"
    assert gitssh.parse_identity_files(out) == ["~/.ssh/id_rsa", "/keys/work key"]


def test_ssh_command_puts_user_keys_first() -> None:
    assert gitssh.ssh_command("ssh", ["/u/a", "/u/b"], "/tmp/k", ["-p", "22", "git@h", "cmd"]) == [
        "ssh", "-i", "/u/a", "-i", "/u/b", "-i", "/tmp/k", "-p", "22", "git@h", "cmd",
    ]  # fmt: skip


def test_temp_key_is_private(tmp_path: Path) -> None:
    path = gitssh.write_temp_key(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----"
    )
    try:
        assert (os.stat(path).st_mode & 0o777) == 0o600
        assert Path(path).read_text().endswith("-----\n")
    finally:
        os.unlink(path)


# ---------------------------------------------------------------- WorkspaceStart, no script process


class _Registry:
    def __init__(self) -> None:
        self.groups: dict[int, str] = {}

    def add(self, pgid: int, what: str) -> None:
        self.groups[pgid] = what

    def launch_argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv)


async def _run_start(tmp_path: Path, script: str, shell: str) -> tuple[list[str], _Registry]:
    posted: list[str] = []
    done = asyncio.Event()

    async def post(state: str) -> None:
        posted.append(state)
        if state in ("ready", "start_error"):
            done.set()

    registry = _Registry()
    start = startup.WorkspaceStart(
        post_lifecycle=post,
        children=registry,
        log_path=tmp_path / "logs" / startup.LOG_FILE_NAME,
        max_log_bytes=1 << 20,
        grace=0.1,
        shell=lambda: shell,
        environment=lambda md: {"PATH": "/usr/bin:/bin"},
        working_directory=lambda md: str(tmp_path),
        clock=SYSTEM_CLOCK,
    )
    await start.on_metadata(_metadata(startup_script=script), True)
    await asyncio.wait_for(done.wait(), 5)
    start.close()
    return posted, registry


async def test_empty_script_is_ready_at_once(tmp_path: Path) -> None:
    posted, registry = await _run_start(tmp_path, "  \n", "/bin/sh")
    assert posted == ["starting", "ready"]
    assert registry.groups == {}


@pytest.mark.e2e
async def test_shell_that_cannot_start_is_start_error(tmp_path: Path) -> None:
    posted, registry = await _run_start(tmp_path, "true", str(tmp_path / "no-such-shell"))
    assert posted == ["starting", "start_error"]
    assert registry.groups == {}
    text = (tmp_path / "logs" / startup.LOG_FILE_NAME).read_text()
    assert "could not start" in text


async def test_reporter_backoff_is_cut_short_by_a_reconnect() -> None:
    """While the server is away the retry delay grows; a reconnect retries at once."""
    lc = lifecycle.Lifecycle()
    lc.apply(lifecycle.START)
    up = asyncio.Event()
    attempts: list[str] = []

    async def post(state: str) -> None:
        attempts.append(state)
        if not up.is_set():
            raise WsagentError("down")

    clock = FakeClock()
    reporter = startup.LifecycleReporter(lc, post, clock=clock)
    # Pretend many failures already happened: the next delay is the 15 s ceiling.
    for _ in range(10):
        reporter._retry.backoff.next_delay()
    flushing = asyncio.create_task(reporter.flush())
    await clock.settle()
    assert attempts == ["starting"] and clock.sleeps[-1] >= 7.5
    up.set()
    reporter.kick()
    await clock.settle()  # no virtual time passes: the kick cut the 7.5-15 s delay
    assert flushing.done()
    await flushing
    assert attempts == ["starting", "starting"]
    assert lc.pending() is None


def test_read_motd_text(tmp_path: Path) -> None:
    f = tmp_path / "motd"
    f.write_bytes(b"one\r\ntwo")
    assert motd.read_motd(str(f), str(tmp_path)) == "one\ntwo\n"
    (tmp_path / ".hushlogin").touch()
    assert motd.read_motd(str(f), str(tmp_path)) == ""
