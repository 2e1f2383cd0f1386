"""The server's terminal relay against a scripted agent on 127.0.0.1.

The "agent" here is a real WebSocket client holding a real agent token: it keeps the
coordinate socket open, reads the PTYRequest extension and dials back by hand, so the
server's rules for dial-back sessions can be exercised one by one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.sdk.dialback import truncate_reason
from agent.sdk.pty import ReconnectingPTYInit, ReconnectingPTYRequest
from agent.sdk.tailnet import Node
from controlplane.ptyrelay import parse_dimension
from tests.conftest import ControlPlane, poll_until

pytestmark = pytest.mark.timeout(60)


class ScriptedAgent:
    def __init__(self, cp: ControlPlane, token: str) -> None:
        self.cp = cp
        self.token = token
        self.ws: ClientConnection | None = None

    def ws_url(self, path: str, query: str = "") -> str:
        base = self.cp.url.replace("http://", "ws://")
        return f"{base}/api/v2/workspaceagents/me/{path}" + (f"?{query}" if query else "")

    async def connect(self) -> None:
        self.ws = await connect(
            self.ws_url("coordinate"),
            additional_headers={"Cookie": f"coder_session_token={self.token}"},
            compression=None,
        )
        await self.ws.send(json.dumps(Node.new_agent_node(999).to_json()))

    async def next_request(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            value = json.loads(raw)
            if isinstance(value, dict) and value.get("type") == "pty_request":
                return value

    async def dial(self, session: str, token: str | None = None) -> ClientConnection:
        return await connect(
            self.ws_url("pty-dial", urlencode({"session": session})),
            additional_headers={"Cookie": f"coder_session_token={token or self.token}"},
            compression=None,
            close_timeout=1,
        )


async def _workspace(cp: ControlPlane, user: str) -> tuple[str, str, str]:
    _, user_token = await cp.create_user(user)
    agents = await cp.create_workspace(user, "dev", [{"name": "main"}])
    agent_id, agent_token = agents["main"]
    return user_token, agent_id, agent_token


async def _connected(cp: ControlPlane, agent_id: str, token: str) -> bool:
    return bool((await cp.get_agent_json(agent_id, token))["status"] == "connected")


def _user_url(cp: ControlPlane, agent_id: str, **query: Any) -> str:
    base = cp.url.replace("http://", "ws://")
    return f"{base}/api/v2/workspaceagents/{agent_id}/pty?{urlencode(query)}"


async def _open_user(cp: ControlPlane, agent_id: str, token: str, **query: Any) -> ClientConnection:
    return await connect(
        _user_url(cp, agent_id, **query),
        additional_headers={"Coder-Session-Token": token},
        compression=None,
        close_timeout=1,
    )


@pytest.fixture
async def plane(make_control_plane: Any) -> ControlPlane:
    cp: ControlPlane = await make_control_plane(pty_dial_timeout=1.5)
    return cp


async def _scripted(cp: ControlPlane, user: str = "alice") -> tuple[str, str, ScriptedAgent]:
    user_token, agent_id, agent_token = await _workspace(cp, user)
    agent = ScriptedAgent(cp, agent_token)
    await agent.connect()
    await poll_until(lambda: _connected(cp, agent_id, user_token), timeout=10)
    return user_token, agent_id, agent


@pytest.mark.e2e
async def test_init_frame_pipe_and_close_reason(plane: ControlPlane) -> None:
    user_token, agent_id, agent = await _scripted(plane)
    reconnect = str(uuid.uuid4()).upper()  # any form Go's uuid.Parse accepts
    user_task = asyncio.create_task(
        _open_user(
            plane, agent_id, user_token, reconnect=reconnect, height="x", width=132, command="top"
        )
    )
    request = await agent.next_request()
    back = await agent.dial(request["session_id"])
    frame = await asyncio.wait_for(back.recv(), 5)
    assert isinstance(frame, bytes)
    parsed = ReconnectingPTYInit.split_frame(frame)
    assert parsed is not None
    assert parsed[0] == ReconnectingPTYInit(reconnect.lower(), 80, 132, "top")
    user = await user_task

    await user.send(ReconnectingPTYRequest("ls\r").encode())
    assert await asyncio.wait_for(back.recv(), 5) == ReconnectingPTYRequest("ls\r").encode()
    await back.send(b"\x1b[1moutput\x00bytes")
    assert await asyncio.wait_for(user.recv(), 5) == b"\x1b[1moutput\x00bytes"

    # The single-use session cannot be dialed again.
    with pytest.raises(InvalidStatus) as again:
        await agent.dial(request["session_id"])
    assert again.value.response.status_code == 404

    await back.close(1000, "process exited with code 7")
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(user.recv(), 5)
    assert closed.value.rcvd is not None
    rcvd = closed.value.rcvd
    assert (rcvd.code, rcvd.reason) == (1000, "process exited with code 7")


@pytest.mark.e2e
async def test_user_close_closes_the_agent_side(plane: ControlPlane) -> None:
    user_token, agent_id, agent = await _scripted(plane)
    user_task = asyncio.create_task(
        _open_user(plane, agent_id, user_token, reconnect=str(uuid.uuid4()))
    )
    back = await agent.dial((await agent.next_request())["session_id"])
    await asyncio.wait_for(back.recv(), 5)  # init
    user = await user_task
    await user.close()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(back.recv(), 5)


@pytest.mark.e2e
async def test_dial_back_rules(plane: ControlPlane) -> None:
    user_token, agent_id, agent = await _scripted(plane)
    _, _, other_token = await _workspace(plane, "bob")
    user_task = asyncio.create_task(
        _open_user(plane, agent_id, user_token, reconnect=str(uuid.uuid4()))
    )
    session = (await agent.next_request())["session_id"]
    for token, status in (("", 401), (other_token, 403)):
        with pytest.raises(InvalidStatus) as refused:
            await agent.dial(session, token=token or "x")
        assert refused.value.response.status_code == status
    with pytest.raises(InvalidStatus) as unknown:
        await agent.dial("no-such-session")
    assert unknown.value.response.status_code == 404
    back = await agent.dial(session)  # still valid for its own agent
    await asyncio.wait_for(back.recv(), 5)
    user = await user_task
    await user.close()


@pytest.mark.e2e
async def test_agent_that_never_dials_back(plane: ControlPlane) -> None:
    user_token, agent_id, agent = await _scripted(plane)
    user = await _open_user(plane, agent_id, user_token, reconnect=str(uuid.uuid4()))
    request = await agent.next_request()
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(user.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011
    assert closed.value.rcvd.reason.startswith("dial workspace agent:")
    # Too late now: the session has expired.
    with pytest.raises(InvalidStatus) as late:
        await agent.dial(request["session_id"])
    assert late.value.response.status_code == 404


@pytest.mark.e2e
async def test_agent_must_be_connected(plane: ControlPlane) -> None:
    user_token, agent_id, _ = await _workspace(plane, "carol")
    with pytest.raises(InvalidStatus) as refused:
        await _open_user(plane, agent_id, user_token, reconnect=str(uuid.uuid4()))
    assert refused.value.response.status_code == 400
    body = json.loads(refused.value.response.body or b"{}")
    assert "connected" in body["message"]


def test_parse_dimension_like_go_parseuint() -> None:
    assert parse_dimension("24") == 24
    assert parse_dimension("65535") == 65535
    for bad in (None, "", "-1", "+5", "65536", "1e3", " 5", "0x10"):
        assert parse_dimension(bad) == 80


def test_close_reason_truncated_to_123_bytes() -> None:
    assert truncate_reason("ok").encode() == b"ok"
    cut = truncate_reason("dial workspace agent: " + "é" * 200).encode()
    assert len(cut) <= 123
    cut.decode("utf-8")  # still valid UTF-8
