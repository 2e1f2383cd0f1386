"""The running agent: its parts as :func:`agent.compose.compose` built them, the run
until a signal, and the bounded shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from agent.children import ChildRegistry
from agent.clock import Clock
from agent.connection import ConnectionLoop
from agent.errors import WsagentError
from agent.supervisor import Supervisor, TaskFactory
from wscommon.logs import close_stream

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = structlog.get_logger()

# Shutdown must finish within 5 s of the signal; these split that budget.
SHUTDOWN_BUDGET: Final = 4.5
SOCKET_CLOSE_TIMEOUT: Final = 1.0
# After a shutdown script (whose time is its own) what is left gets this long, so the
# whole fits in the script's timeout plus 5 s.
AFTER_SCRIPT_BUDGET: Final = 2.0
ATTEMPT_STOP_TIMEOUT: Final = 1.5
TASK_STOP_TIMEOUT: Final = 0.5


@dataclass(frozen=True)
class Agent:
    """The running parts, and nothing else."""

    connection: ConnectionLoop
    supervisor: Supervisor
    children: ChildRegistry
    clock: Clock
    shutdown_grace: float
    # Started with the run, supervised until shutdown (metrics, systemd notify...).
    background: Sequence[tuple[str, TaskFactory]]
    # Called first at shutdown, in order: components stop reporting, release sockets.
    on_shutdown: Sequence[Callable[[], None]]
    close_coordinate_socket: Callable[[], Awaitable[None]]
    close_client: Callable[[], Awaitable[None]]
    # The Prometheus series (CODER_AGENT_METRICS_ADDRESS), served by a background task.
    metrics: AgentMetrics | None = None
    # Run on the first signal, before anything stops, while the agent is still connected
    # (the shutdown script and the states it reports). Each bounds its own time.
    shutdown_phases: Sequence[Callable[[], Awaitable[None]]] = ()

    async def run(self, stop: asyncio.Event) -> None:
        """Start the background tasks, then connect and reconnect until ``stop`` is set."""
        for name, factory in self.background:
            self.supervisor.start(name, factory)
        await self.connection.run(stop)

    async def run_shutdown_phases(self) -> None:
        for phase in self.shutdown_phases:
            try:
                await phase()
            except Exception as exc:  # one component's bug must not stop the shutdown
                log.error("agent.shutdown_phase_failed", error=str(exc), exc_info=exc)

    async def shutdown(self, budget: float = SHUTDOWN_BUDGET) -> None:
        """Close politely, stop children (TERM, grace, KILL), release the client.

        Every step is bounded so the whole takes at most ``budget`` seconds.
        """
        deadline = self.clock.monotonic() + budget
        log.info("agent.shutting_down")
        for step in self.on_shutdown:
            try:
                step()
            except Exception as exc:  # one component's bug must not stop the rest
                log.error("agent.shutdown_hook_failed", error=str(exc), exc_info=exc)
        try:
            await asyncio.wait_for(self.close_coordinate_socket(), timeout=SOCKET_CLOSE_TIMEOUT)
        except (TimeoutError, OSError, WsagentError):
            pass
        await self.supervisor.stop(TASK_STOP_TIMEOUT)
        # Leave a little time after the KILL for the client to close.
        left = deadline - self.clock.monotonic()
        await self.children.terminate_all(max(0.0, min(self.shutdown_grace, left - 0.3)))
        try:
            await asyncio.wait_for(
                self.close_client(), timeout=max(0.1, deadline - self.clock.monotonic())
            )
        except (TimeoutError, OSError):
            pass
        log.info("agent.stopped")


async def run_until_signalled(agent: Agent, early: list[int] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT/SIGHUP; a second signal exits at once.

    ``early`` holds signals that arrived before the loop took over (see agent.cli).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signalled_at: list[float] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("agent.forced_exit", signal=name)
            agent.children.kill_all_now()
            close_stream(timeout=0.2)
            os._exit(128 + signum)
        log.info("agent.signal_received", signal=name)
        signalled_at.append(agent.clock.monotonic())
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    for pending in early or ():
        on_signal(pending)
    halt = asyncio.Event()
    runner = asyncio.create_task(agent.run(halt), name="agent.run")
    phase_time = 0.0
    try:
        signalled = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({runner, signalled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            signalled.cancel()
        if stop.is_set() and not runner.done():
            # The workspace's own shutdown (the shutdown script and the states it reports)
            # runs while the agent is still connected; the socket closes after it.
            started = agent.clock.monotonic()
            await agent.run_shutdown_phases()
            phase_time = agent.clock.monotonic() - started
        halt.set()
        await runner
    finally:
        halt.set()
        if not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=ATTEMPT_STOP_TIMEOUT)
        # The 5 s promise runs from the signal: stopping the attempt already used some.
        spent = agent.clock.monotonic() - signalled_at[0] if signalled_at else 0.0
        budget = max(1.0, SHUTDOWN_BUDGET - (spent - phase_time))
        if phase_time > 1.0:
            budget = min(budget, AFTER_SCRIPT_BUDGET)
        await agent.shutdown(budget)
    return 0
