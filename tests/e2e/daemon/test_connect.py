"""Acceptance: the daemon connects, reports start-up and holds the coordinate socket."""

from __future__ import annotations

import re
import signal

import pytest

from tests.e2e.daemon.conftest import Daemon, SpawnDaemon
from tests.fakes.fake_control_plane import FakeControlPlane

pytestmark = pytest.mark.e2e

# golang.org/x/mod/semver.IsValid, which the server applies to the startup version.
SEMVER = re.compile(
    r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)


@pytest.mark.parametrize("directory", ["", "~", "$HOME", "~/src/$PROJECT"])
async def test_startup_posts_semver_and_expanded_directory(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str, directory: str
) -> None:
    """The startup post carries a v-semver and the directory with ~ and $VARS expanded."""
    fake_cp.directory = directory
    daemon = await spawn_daemon(fake_cp.url, agent_token, PROJECT="wsagent")
    await fake_cp.wait_for(lambda: len(fake_cp.startups) >= 1)

    startup = fake_cp.startups[0]
    assert startup.headers["Coder-Session-Token"] == agent_token
    assert SEMVER.match(startup.body["version"]), startup.body
    home = str(daemon.home)
    expected = {"": "", "~": home, "$HOME": home, "~/src/$PROJECT": f"{home}/src/wsagent"}
    assert startup.body["expanded_directory"] == expected[directory]


async def test_coordinate_socket_opens_with_token_cookie(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """The coordinate socket authenticates with the cookie and sends a tailnet Node."""
    await spawn_daemon(fake_cp.url, agent_token)
    await fake_cp.wait_for(lambda: bool(fake_cp.of("WS-MESSAGE", "/me/coordinate")))

    opened = fake_cp.coordinate_opens[0]
    assert opened.cookies["coder_session_token"] == agent_token
    node = fake_cp.of("WS-MESSAGE", "/me/coordinate")[0].body
    assert node["preferred_derp"] == 999
    assert re.fullmatch(r"nodekey:[0-9a-f]{64}", node["key"])
    assert re.fullmatch(r"discokey:[0-9a-f]{64}", node["disco"])
    assert node["addresses"] == ["fd7a:115c:a1e0:49d6:b259:b7ac:b1b2:48f4/128"]
    # The order of one attempt (docs/protocol.md, "Run loop"): metadata, startup, then the socket.
    steps = [r.path.rsplit("/", 1)[-1] for r in fake_cp.requests]
    order = [s for s in steps if s in ("metadata", "startup", "coordinate")]
    assert order[:3] == ["metadata", "startup", "coordinate"]


async def test_reconnects_within_5s_after_socket_drop(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """After the server drops the coordinate socket, the daemon is back within 5 s."""
    daemon = await spawn_daemon(fake_cp.url, agent_token)
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    for round_ in range(2, 4):
        dropped_at = await fake_cp.wait_for(lambda: True)
        await fake_cp.drop_coordinate()

        def reopened(opens: int = round_) -> bool:
            return len(fake_cp.coordinate_opens) >= opens and fake_cp.open_sockets == 1

        back_at = await fake_cp.wait_for(reopened, within=5.0)
        assert back_at - dropped_at < 5.0
    # Each attempt posts startup again before reopening the socket.
    assert len(fake_cp.startups) == 3
    assert daemon.proc.returncode is None


async def test_reconnects_and_posts_startup_after_server_down(
    fake_cp: FakeControlPlane, spawn_daemon: SpawnDaemon, agent_token: str
) -> None:
    """With the server down (the daemon's retries refused), the daemon reconnects and posts
    startup within 15 s of its return. Longer outages, and the backoff they grow, are
    played in virtual time in tests/agent/test_connection.py."""
    daemon = await spawn_daemon(fake_cp.url, agent_token)
    await fake_cp.wait_for(lambda: fake_cp.open_sockets == 1)
    await fake_cp.down()
    await daemon.wait_for(lambda: saw_refused_retry(daemon), 10.0, "refused reconnection attempt")
    startups_before = len(fake_cp.startups)
    up_at = await _up(fake_cp)
    back_at = await fake_cp.wait_for(
        lambda: len(fake_cp.startups) > startups_before and fake_cp.open_sockets == 1,
        within=15.0,
    )
    assert back_at - up_at < 15.0
    assert daemon.proc.returncode is None
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(5.0) == 0


def saw_refused_retry(daemon: Daemon) -> bool:
    return any(e.get("error_type") == "ConnectRefused" for e in daemon.named("agent.run_failed"))


async def _up(server: FakeControlPlane) -> float:
    await server.up()
    return await server.wait_for(lambda: True)
