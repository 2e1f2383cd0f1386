"""``wsagent agent``: parse settings, become PID 1's reaper if needed, run the daemon."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from wscommon import __version__

if TYPE_CHECKING:
    from agent.logsinks import Sinks
    from wscommon.logs import RotatingFile

EXIT_USAGE = 2


# Optional packages that structlog and httpx import whenever they are installed: rich,
# pygments and better_exceptions for pretty tracebacks on a console, click for httpx's
# command line, greenlet for structlog's deprecated greenlet-local context. The agent uses
# none of them (its logs are JSON lines and plain text), yet with rich, click and greenlet
# installed (a developer's environment, or any image that has them) they cost 7.6 MiB of
# resident memory and about a third of the start-up (docs/benchmarks.md, "Agent
# footprint"). A None entry in sys.modules makes their import fail, which both libraries
# handle by doing without.
UNUSED_EXTRAS = ("rich", "pygments", "better_exceptions", "click", "greenlet")


def skip_unused_extras() -> None:
    for name in UNUSED_EXTRAS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    for name in DEFERRED_IMPORTS:
        defer_import(name)


# Imported by a dependency but not used by the agent: loaded on first use instead.
# websockets imports importlib.metadata for a version string that a released websockets
# never computes; with what it pulls in (zipfile, csv, email parsing) that is 0.8 MiB of
# resident memory in every connected agent.
DEFERRED_IMPORTS = ("importlib.metadata",)


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until something reads one of its
    attributes; then imports the real module, puts it in its place and answers from it."""

    def __getattr__(self, attr: str) -> object:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, real)
        return getattr(real, attr)


def defer_import(name: str) -> None:
    """Make ``import name`` cheap until the module is really used."""
    if name in sys.modules:
        return
    import importlib.util  # frozen, and already imported by ``python -m``

    spec = importlib.util.find_spec(name)  # finds, does not execute
    if spec is None:
        return
    stub = _Deferred(name)
    # The module's own spec (not initializing), so the import system takes the stand-in
    # as imported and find_spec() still answers for it.
    stub.__spec__ = spec
    sys.modules[name] = stub
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(importlib.import_module(parent), child, stub)


def run_agent(argv: Sequence[str]) -> int:
    skip_unused_extras()
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        print(f"wsagent agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from agent import reaper

    if reaper.should_reap(config.no_reap):
        reaper.exec_init([sys.executable, "-m", "wsagent", "agent", *argv])

    # Until the event loop takes over the signals, remember them instead of dying with
    # the default action: a SIGTERM during start-up still means a clean stop and exit 0.
    early = _catch_early_signals()

    # Imported only now: as PID 1 the process above is the reaper for the container's
    # lifetime, and asyncio (with ssl) alone would add ~9 MiB to it.
    import asyncio

    opened: list[LogOutputs] = []

    async def main() -> int:
        from agent.firstrequest import FirstRequest

        first = FirstRequest(config)
        first.send()
        await first.sent()
        # The rest is imported and set up while the first request is in flight: the logs
        # (structlog), then the agent's parts. Their modules take longer to import than
        # the interpreter takes to start.
        try:
            opened.append(open_logs(config))
        except LogSetupError:
            first.discard()
            await first.client.aclose()
            raise
        from agent.compose import compose
        from agent.daemon import run_until_signalled

        return await run_until_signalled(compose(config, first_request=first), early)

    try:
        return asyncio.run(main())
    except (ConfigError, LogSetupError) as exc:
        print(f"wsagent agent: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for outputs in opened:
            outputs.close()


class LogSetupError(Exception):
    """A log output could not be opened: a usage error (exit 2), like a bad flag."""


class LogOutputs:
    """The agent's log outputs: the rotating file, the extra sinks, the writer thread."""

    def __init__(self, sinks: Sinks, log_file: RotatingFile | None) -> None:
        self.sinks = sinks
        self.log_file = log_file

    def close(self) -> None:
        from wscommon import logs

        logs.close_stream(timeout=1.0)
        self.sinks.close()
        if self.log_file is not None:
            self.log_file.close()


def open_logs(config: AgentConfig) -> LogOutputs:
    """Open the log outputs and log ``agent.starting``; LogSetupError if one cannot be
    opened."""
    import structlog

    from agent.logsinks import open_sinks
    from wscommon import logs
    from wscommon.logfile import LogFileError, make_log_dir

    level = os.environ.get("CODER_AGENT_LOG_LEVEL", "info")
    try:
        sinks = open_sinks(
            {
                "human": config.log_human,
                "json": config.log_json,
                "stackdriver": config.log_stackdriver,
            },
            config.log_max_bytes,
            config.log_backups,
        )
    except OSError as exc:
        raise LogSetupError(f"log output: {exc}") from exc
    refused: LogFileError | None = None
    try:
        make_log_dir(config.log_dir)
        try:
            log_file = logs.configure(
                log_file=config.log_dir / "coder-agent.log",
                max_bytes=config.log_max_bytes,
                backups=config.log_backups,
                level=level,
                background=True,
                extra=[sinks],
            )
        except LogFileError as exc:
            # Someone else's file or a link under the log's name: run on, logging to
            # stdout only, and say why (a refusal to start would hand any local user a
            # way to stop the agent).
            refused = exc
            log_file = logs.configure(log_file=None, level=level, background=True, extra=[sinks])
    except OSError as exc:
        sinks.close()
        raise LogSetupError(f"CODER_AGENT_LOG_DIR: {exc}") from exc

    if refused is not None:
        structlog.get_logger().error("logs.file_refused", error=str(refused))
    structlog.get_logger().info(
        "agent.starting",
        version=f"v{__version__}",
        url=config.url,
        auth=config.auth,
        pid=os.getpid(),
    )
    if config.pprof_address:
        structlog.get_logger().warning(
            "agent.pprof_unavailable",
            address=config.pprof_address,
            reason="profiling is not available in the Python agent; nothing listens there",
        )
    return LogOutputs(sinks, log_file)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _catch_early_signals() -> list[int]:
    """Record stop signals that arrive before the event loop handles them; a second one
    exits at once, as it does later."""
    received: list[int] = []

    def remember(signum: int, _frame: object) -> None:
        if received:
            os._exit(128 + signum)
        received.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, remember)
    return received
