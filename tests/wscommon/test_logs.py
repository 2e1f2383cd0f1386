"""wscommon.logs: Redactor, RotatingFile, and the configured
pipeline writing JSON to a stream and a file."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest
import structlog

from wscommon.logs import REDACTED, Redactor, RotatingFile, configure

TOKEN = "5f0d2a4e-9c1b-4a8e-b7f3-2d6c8e1a9b40"


# ---------------------------------------------------------------- Redactor


def test_redactor_scrubs_known_secret_from_any_string_field() -> None:
    redactor = Redactor()
    redactor.add(TOKEN)
    event = redactor(None, "info", {"event": "x", "error": f"GET /?t={TOKEN} failed", "n": 3})
    assert event == {"event": "x", "error": f"GET /?t={REDACTED} failed", "n": 3}


def test_redactor_drops_sensitive_keys_whatever_their_value() -> None:
    redactor = Redactor()
    event = redactor(None, "info", {"Token": "abc", "password": "pw", "cookie": "c=1", "url": "u"})
    assert event == {"Token": REDACTED, "password": REDACTED, "cookie": REDACTED, "url": "u"}


def test_redactor_scrubs_exception_values_and_ignores_short_values() -> None:
    redactor = Redactor()
    redactor.add(TOKEN)
    redactor.add("abc")  # too short to be a token: would scrub ordinary words
    event = redactor(None, "info", {"exc": ValueError(f"bad {TOKEN}"), "word": "abc"})
    assert TOKEN not in event["exc"] and REDACTED in event["exc"]
    assert event["word"] == "abc"


def test_redactor_scrub_replaces_every_occurrence_of_every_secret() -> None:
    redactor = Redactor()
    other = "0123456789abcdef"
    redactor.add(TOKEN)
    redactor.add(other)
    assert redactor.scrub(f"{TOKEN}:{other}:{TOKEN}") == f"{REDACTED}:{REDACTED}:{REDACTED}"


# ---------------------------------------------------------------- RotatingFile


def test_rotating_file_is_created_0600_and_fixes_a_wider_mode(tmp_path: Path) -> None:
    path = tmp_path / "coder-agent.log"
    path.write_text("old\n")
    path.chmod(0o644)
    log = RotatingFile(path, max_bytes=1 << 20)
    log.write("new\n")
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "old\nnew\n"  # appends: the previous run's lines are kept


def test_rotating_file_rotates_past_the_cap_and_keeps_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "coder-agent.log"
    log = RotatingFile(path, max_bytes=4096, backups=2)
    line = "x" * 99 + "\n"
    for _ in range(200):  # 20,000 bytes: several rotations
        log.write(line)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["coder-agent.log", "coder-agent.log.1", "coder-agent.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 4096
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3 * 4096


def test_rotating_file_never_goes_below_the_minimum_cap(tmp_path: Path) -> None:
    log = RotatingFile(tmp_path / "a.log", max_bytes=10)
    assert log.max_bytes == 4096
    log.close()
    log.write("after close is ignored\n")
    assert (tmp_path / "a.log").read_text() == ""


# ---------------------------------------------------------------- configure


@pytest.fixture(autouse=True)
def _restore_stdlib_logging():  # type: ignore[no-untyped-def]
    """configure() installs a bridge on the root logger; give other tests theirs back."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configured_pipeline_writes_redacted_json_to_stream_and_file(tmp_path: Path) -> None:
    from wscommon.logs import REDACTOR

    REDACTOR.add(TOKEN)
    stream = io.StringIO()
    path = tmp_path / "coder-agent.log"
    file = configure(log_file=path, stream=stream, level="info")
    log = structlog.get_logger()
    log.debug("test.hidden")
    log.info("test.event", detail={"nested": f"token {TOKEN}"}, authorization="Bearer x")
    assert file is not None
    file.close()

    [line] = stream.getvalue().splitlines()  # the debug line was filtered out
    event = json.loads(line)
    assert event["event"] == "test.event"
    assert event["level"] == "info"
    assert event["authorization"] == REDACTED
    assert TOKEN not in line and REDACTED in event["detail"]["nested"]
    assert path.read_text().splitlines() == [line]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_configured_pipeline_bridges_stdlib_warnings(tmp_path: Path) -> None:
    import logging

    stream = io.StringIO()
    configure(log_file=None, stream=stream)
    logging.getLogger("websockets.client").warning("keepalive ping timeout")
    logging.getLogger("httpx").info("chatty request line")  # below WARNING: dropped
    [line] = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "lib.websockets.client"
    assert event["message"] == "keepalive ping timeout"


def test_rotation_that_cannot_rename_empties_the_file_instead_of_raising(tmp_path: Path) -> None:
    """The backup name is taken by a directory: the file is emptied in place, so it keeps
    its cap, and writing goes on."""
    path = tmp_path / "coder-agent.log"
    (tmp_path / "coder-agent.log.1").mkdir()
    (tmp_path / "coder-agent.log.1" / "keep").write_text("x")
    log = RotatingFile(path, max_bytes=4096)
    for i in range(100):
        log.write(f"{i:03d}" + "y" * 96 + "\n")
    log.close()
    assert path.stat().st_size <= 4096
    assert path.read_text().splitlines()[-1].startswith("099")


def test_a_line_longer_than_the_cap_is_cut_to_it(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = RotatingFile(path, max_bytes=4096)
    log.write("z" * 10_000)
    log.close()
    assert path.stat().st_size == 4096


def test_background_writer_keeps_order_and_drains_on_close() -> None:
    from wscommon.logs import BackgroundWriter

    stream = io.StringIO()
    writer = BackgroundWriter(stream)
    for i in range(500):
        writer.write(f"{i}\n")
    writer.close(timeout=5)
    assert stream.getvalue().splitlines() == [str(i) for i in range(500)]
    assert writer.dropped == 0


def test_background_writer_drops_past_its_cap_instead_of_blocking(tmp_path: Path) -> None:
    """Nobody reads the pipe: writes return at once and the excess is counted."""
    import fcntl

    from wscommon.logs import BackgroundWriter

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    with os.fdopen(write_end, "w") as stream:
        writer = BackgroundWriter(stream, max_pending=10)
        for _ in range(1000):
            writer.write("x" * 100 + "\n")  # returns at once even though the pipe is full
        assert writer.dropped > 0
        writer.close(timeout=0.1)  # gives up: the thread is stuck in the full pipe
    os.close(read_end)


def test_background_writer_writes_at_once_when_the_pipe_has_room() -> None:
    """With room in the pipe a line is on the reader's side when write() returns."""
    from wscommon.logs import BackgroundWriter

    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        writer = BackgroundWriter(stream)
        writer.write('{"event": "x"}\n')
        assert os.read(read_end, 100) == b'{"event": "x"}\n'
        writer.close(timeout=1)
    os.close(read_end)
