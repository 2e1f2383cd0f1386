"""agent.connection: the reconnect loop on a FakeClock, against an in-memory control plane.

Outages, backoff and the healthy-connection reset all happen in virtual time: no sockets,
no real sleeps.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from agent.connection import (
    BACKOFF_CEILING,
    HEALTHY_CONNECTION_SECONDS,
    OUTDATED_BUILD_DELAY,
    STATE_BACKOFF,
    STATE_CONNECTED,
    ConnectionLoop,
    TokenExchange,
)
from agent.errors import ApiError, ConfigError, ConnectRefused, ProtocolError
from agent.sdk.models import Metadata, PostStartupRequest
from agent.sdk.tailnet import Node
from tests.fakes.clock import FakeClock

URL = "http://cp/api/v2/workspaceagents/me"


class Tokens:
    def __init__(self, token: str = "") -> None:
        self.token = token


class Server:
    """The control plane as the loop sees it: up (answers, holds the socket) or down
    (refuses). ``fail`` makes the metadata call raise something else."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.is_up = True
        self.fail: Exception | None = None
        self.startups: list[tuple[float, PostStartupRequest]] = []
        self.opens: list[float] = []
        self.open_sockets = 0
        self._drops: list[asyncio.Event] = []

    def _check(self, what: str) -> None:
        if not self.is_up:
            raise ConnectRefused("GET", f"{URL}/{what}", "connection refused")

    async def metadata(self) -> Metadata:
        self._check("metadata")
        if self.fail is not None:
            raise self.fail
        return Metadata(directory="")

    async def post_startup(self, request: PostStartupRequest) -> None:
        self._check("startup")
        self.startups.append((self.clock.now, request))

    async def serve(self, node: Node, on_connected: Callable[[], None]) -> None:
        self._check("coordinate")
        drop = asyncio.Event()
        self._drops.append(drop)
        self.opens.append(self.clock.now)
        self.open_sockets += 1
        on_connected()
        try:
            await drop.wait()
        finally:
            self.open_sockets -= 1
        raise ProtocolError("GET", f"{URL}/coordinate", "coordinate socket closed")

    def drop(self) -> None:
        for drop in self._drops:
            drop.set()
        self._drops.clear()

    def down(self) -> None:
        self.is_up = False
        self.drop()

    def up(self) -> None:
        self.is_up = True


def make_loop(
    server: Server,
    clock: FakeClock,
    *,
    startups: list[tuple[Metadata, bool]] | None = None,
    exchange: TokenExchange | None = None,
    token_auth: bool = True,
    max_delay: float = BACKOFF_CEILING,
) -> ConnectionLoop:
    async def on_startup(metadata: Metadata, first: bool) -> None:
        if startups is not None:
            startups.append((metadata, first))

    return ConnectionLoop(
        version="v0.0.0-test",
        tokens=Tokens("t" * 36),
        exchange=exchange,
        fetch_metadata=server.metadata,
        post_startup=server.post_startup,
        on_startup=on_startup,
        serve=server.serve,
        remember_secret=lambda secret: None,
        clock=clock,
        rng=random.Random(7),
        reconnect_max_delay=max_delay,
        outdated_needs_new_token=token_auth,
    )


async def stop_loop(stop: asyncio.Event, runner: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(runner, 1)  # stopping takes no virtual time


async def test_reconnects_and_posts_startup_after_server_down_3s() -> None:
    """With the server down for 3 s, the loop reconnects and posts startup within 15 s."""
    clock = FakeClock()
    server = Server(clock)
    loop = make_loop(server, clock)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await clock.run_until(lambda: server.open_sockets == 1, within=1)
    server.down()
    await clock.advance(3.0)  # the outage, in virtual time
    assert loop.connection_state == STATE_BACKOFF
    startups_before = len(server.startups)
    up_at = clock.now
    server.up()
    back_at = await clock.run_until(
        lambda: len(server.startups) > startups_before and server.open_sockets == 1,
        within=15.0,
    )
    assert back_at - up_at < 15.0
    assert loop.connection_state == STATE_CONNECTED
    assert not runner.done()
    await stop_loop(stop, runner)


async def test_reconnects_at_once_after_a_socket_drop() -> None:
    """After a dropped socket the loop is back within 5 s (well within: the backoff starts
    at 100 ms); each attempt posts startup again before reopening the socket."""
    clock = FakeClock()
    server = Server(clock)
    loop = make_loop(server, clock)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await clock.run_until(lambda: server.open_sockets == 1, within=1)
    for round_ in range(2, 4):
        dropped_at = clock.now
        server.drop()
        back_at = await clock.run_until(
            lambda n=round_: len(server.opens) >= n and server.open_sockets == 1,  # type: ignore[misc]
            within=5.0,
        )
        assert back_at - dropped_at < 1.0
    assert len(server.startups) == 3
    assert loop.attempts_total == 3 and loop.connections_total == 3
    await stop_loop(stop, runner)


async def test_backoff_grows_to_the_ceiling_and_a_healthy_connection_resets_it() -> None:
    clock = FakeClock()
    server = Server(clock)
    server.is_up = False
    loop = make_loop(server, clock)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await clock.advance(120.0)
    delays = clock.sleeps
    bases = [min(0.1 * 2**i, BACKOFF_CEILING) for i in range(len(delays))]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert max(delays) > BACKOFF_CEILING / 2  # reached the ceiling
    server.up()
    await clock.run_until(lambda: server.open_sockets == 1, within=BACKOFF_CEILING)
    await clock.advance(HEALTHY_CONNECTION_SECONDS)  # a healthy connection...
    seen = len(clock.sleeps)
    server.drop()  # ...then a drop: the backoff starts from the floor again
    await clock.run_until(lambda: server.open_sockets == 1, within=1)
    assert clock.sleeps[seen] <= 0.1
    await stop_loop(stop, runner)


async def test_a_connection_that_flaps_keeps_its_backoff() -> None:
    """Connected, then dropped before it counted as healthy: the delay keeps growing."""
    clock = FakeClock()
    server = Server(clock)
    server.is_up = False
    loop = make_loop(server, clock)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await clock.advance(30.0)
    server.up()
    await clock.run_until(lambda: server.open_sockets == 1, within=BACKOFF_CEILING)
    seen = len(clock.sleeps)
    server.drop()
    await clock.settle()
    assert clock.sleeps[seen] > 1.0  # not back at the 0.1 s floor
    await stop_loop(stop, runner)


async def test_repeated_failures_are_logged_once_with_their_kind() -> None:
    clock = FakeClock()
    server = Server(clock)
    server.is_up = False
    loop = make_loop(server, clock)
    stop = asyncio.Event()
    with capture_logs() as logs:
        runner = asyncio.create_task(loop.run(stop))
        await clock.advance(30.0)
        await stop_loop(stop, runner)
    failures = [e for e in logs if e["event"] == "agent.run_failed"]
    assert loop.attempts_total > 5
    assert len(failures) == 1
    assert failures[0]["error_type"] == "ConnectRefused"
    assert failures[0]["log_level"] == "warning"


async def test_recovery_is_logged_with_the_number_of_failures() -> None:
    clock = FakeClock()
    server = Server(clock)
    server.is_up = False
    loop = make_loop(server, clock)
    stop = asyncio.Event()
    with capture_logs() as logs:
        runner = asyncio.create_task(loop.run(stop))
        await clock.advance(1.0)
        failed = loop.attempts_total
        server.up()
        await clock.run_until(lambda: server.open_sockets == 1, within=BACKOFF_CEILING)
        await stop_loop(stop, runner)
    (connected,) = [e for e in logs if e["event"] == "agent.connected"]
    assert connected["recovered_after_failures"] == failed
    assert connected["first"] is True


async def test_a_config_error_ends_the_loop() -> None:
    """CODER_AGENT_AUTH=auto that finds no cloud: retrying cannot help."""
    clock = FakeClock()
    server = Server(clock)

    async def exchange() -> str:
        raise ConfigError("CODER_AGENT_AUTH", "no cloud detected")

    loop = make_loop(server, clock, exchange=exchange)
    with pytest.raises(ConfigError):
        await clock.run(loop.run(asyncio.Event()), within=1)
    assert loop.token_exchange_failures_total == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(("token_auth", "slow"), [(True, True), (False, False)])
async def test_an_outdated_build_retries_slowly_with_token_auth(
    token_auth: bool, slow: bool
) -> None:
    clock = FakeClock()
    server = Server(clock)
    server.fail = ApiError("GET", f"{URL}/metadata", 403, "forbidden", "agent is outdated")

    async def exchange() -> str:
        return "t" * 36

    loop = make_loop(
        server, clock, token_auth=token_auth, exchange=None if token_auth else exchange
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        runner = asyncio.create_task(loop.run(stop))
        await clock.settle()
        await stop_loop(stop, runner)
    assert (clock.sleeps[0] == OUTDATED_BUILD_DELAY) is slow
    (failure,) = [e for e in logs if e["event"] == "agent.run_failed"]
    assert failure["log_level"] == "error" and "outdated" in failure["hint"]


async def test_stop_cuts_a_backoff_short() -> None:
    clock = FakeClock()
    server = Server(clock)
    server.is_up = False
    loop = make_loop(server, clock, max_delay=3600.0)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await clock.advance(600.0)
    assert clock.next_wakeup is not None and clock.next_wakeup > clock.now  # backing off
    at = clock.now
    await stop_loop(stop, runner)
    assert clock.now == at


async def test_components_get_the_metadata_with_first_only_once() -> None:
    clock = FakeClock()
    server = Server(clock)
    startups: list[tuple[Metadata, bool]] = []
    loop = make_loop(server, clock, startups=startups)
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await clock.run_until(lambda: server.open_sockets == 1, within=1)
    server.drop()
    await clock.run_until(lambda: len(server.opens) == 2 and server.open_sockets == 1, within=1)
    assert [first for _, first in startups] == [True, False]
    assert loop.metadata is startups[-1][0]
    assert server.startups[0][1] == PostStartupRequest("v0.0.0-test", "")
    await stop_loop(stop, runner)


async def test_an_exchanged_token_replaces_the_current_one_and_is_counted() -> None:
    clock = FakeClock()
    server = Server(clock)
    remembered: list[str] = []
    tokens = Tokens("")

    async def exchange() -> str:
        return "exchanged-token-0123456789"

    loop = ConnectionLoop(
        version="v0.0.0-test",
        tokens=tokens,
        exchange=exchange,
        fetch_metadata=server.metadata,
        post_startup=server.post_startup,
        on_startup=lambda metadata, first: asyncio.sleep(0),
        serve=server.serve,
        remember_secret=remembered.append,
        clock=clock,
        rng=random.Random(1),
        reconnect_max_delay=BACKOFF_CEILING,
        outdated_needs_new_token=False,
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run(stop))
    await clock.run_until(lambda: server.open_sockets == 1, within=1)
    assert tokens.token == "exchanged-token-0123456789"
    assert remembered == [tokens.token]  # redacted from every log line from now on
    assert loop.token_exchanges_total == 1 and loop.token_exchange_failures_total == 0
    await stop_loop(stop, runner)
