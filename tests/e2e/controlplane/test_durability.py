"""A ``kill -9`` of a real server process loses no acknowledged write."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from controlplane.store.sqlite import DB_NAME, SQLiteStore
from tests.conftest import REPO, poll_until
from tests.e2e.controlplane.cli import admin, cli_env
from tests.e2e.controlplane.conftest import ME

pytestmark = pytest.mark.e2e


async def start_server_process(
    data_dir: Path, *extra: str, preexec_fn: Callable[[], None] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """Run ``wsagent server`` on a free port; its URL comes from the ``server.listening``
    log line (JSON on stdout when stdout is not a terminal)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        "server",
        "--data-dir",
        str(data_dir),
        "--address",
        "127.0.0.1:0",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=cli_env(),
        cwd=str(REPO),
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"server exited early: {lines}")
                lines.append(raw.decode())
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if event.get("event") == "server.listening":
                    return proc, str(event["url"])
    except BaseException:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        raise


_DRAINS: set[asyncio.Task[None]] = set()


def drain_output(proc: asyncio.subprocess.Process, keep: int = 64) -> deque[str]:
    """Read the server's output to its end in the background, keeping the last ``keep``
    chunks for a failure message. Unread, the pipe fills (64 KiB, then the reader's own
    buffer), the server blocks on its next log line, and once the reader pauses, the
    ``wait()`` after a kill never sees the pipe close."""
    tail: deque[str] = deque(maxlen=keep)
    stdout = proc.stdout
    assert stdout is not None

    async def drain() -> None:
        while chunk := await stdout.read(65536):
            tail.append(chunk.decode(errors="replace"))

    task = asyncio.create_task(drain(), name="test.drain_server_output")
    _DRAINS.add(task)
    task.add_done_callback(_DRAINS.discard)
    return tail


async def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await admin(data_dir, "user", "create", "alice")
    created = await admin(data_dir, "workspace", "create", "--owner", "alice", "--name", "dev")
    agent_id, token = created["agents"][0]["agent_id"], created["agents"][0]["token"]
    # Every report its own row, so each acknowledged one can be found afterwards.
    proc, url = await start_server_process(data_dir, "--stats-min-spacing=0")
    acked: list[int] = []
    versions: list[int] = []
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Coder-Session-Token": token}, timeout=5
        ) as client:

            async def writer(start: int) -> None:
                n = start
                while True:
                    try:
                        response = await client.post(
                            f"{ME}/report-stats", json={"rx_bytes": n, "tx_bytes": 1}
                        )
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code == 200:
                        acked.append(n)  # acknowledged: it must survive
                    n += 8

            async def startup() -> None:
                # Sequential overwrites of one row: the newest acknowledged one must win.
                for n in range(1, 100_000):
                    body = {"version": f"v0.0.{n}", "expanded_directory": ""}
                    try:
                        response = await client.post(f"{ME}/startup", json=body)
                    except httpx.HTTPError:
                        return
                    if response.status_code == 200:
                        versions.append(n)

            tasks = [asyncio.create_task(writer(i + 1)) for i in range(8)]
            tasks.append(asyncio.create_task(startup()))
            # Kill in the middle of the stream of writes.
            await poll_until(lambda: len(acked) >= 200 and len(versions) >= 20, timeout=20)
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == -signal.SIGKILL

    store = await SQLiteStore.open(data_dir)  # recovers the WAL
    try:
        stored = {s.rx_bytes for s in await store.list_stats(agent_id)}
        agent = await store.get_agent(agent_id)
    finally:
        await store.close()
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged writes lost"
    assert agent is not None
    # The newest acknowledged version is there, or the one in flight when the server died.
    assert agent.version in (f"v0.0.{versions[-1]}", f"v0.0.{versions[-1] + 1}"), agent.version
    db = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


async def test_sigterm_stops_cleanly_and_records_the_disconnect(tmp_path: Path) -> None:
    import aiohttp

    data_dir = tmp_path / "data"
    await admin(data_dir, "user", "create", "alice")
    created = await admin(data_dir, "workspace", "create", "--owner", "alice", "--name", "dev")
    agent_id, token = created["agents"][0]["agent_id"], created["agents"][0]["token"]
    proc, url = await start_server_process(data_dir)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"{url}{ME}/coordinate", headers={"Coder-Session-Token": token}
            ) as ws,
        ):
            store = await SQLiteStore.open(data_dir)  # a second reader, as the CLI would be
            try:

                async def connected() -> bool:
                    agent = await store.get_agent(agent_id)
                    return agent is not None and agent.last_connected_at is not None

                await poll_until(connected, timeout=10)
            finally:
                await store.close()
            proc.send_signal(signal.SIGTERM)
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1001  # going away, politely
        assert await asyncio.wait_for(proc.wait(), 5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    store = await SQLiteStore.open(data_dir)
    try:
        agent = await store.get_agent(agent_id)
    finally:
        await store.close()
    assert agent is not None and agent.disconnected_at is not None
    assert agent.last_connected_at is not None
    assert agent.disconnected_at >= agent.last_connected_at


async def test_startup_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    from tests.e2e.controlplane.cli import wsagent

    data_dir = tmp_path / "data"
    proc, url = await start_server_process(data_dir)
    try:
        port = url.rsplit(":", 1)[1]
        busy = await wsagent(
            "server", "--data-dir", str(tmp_path / "other"), "--address", f"127.0.0.1:{port}"
        )
    finally:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
    assert busy.code == 1
    assert "wsagent server: error:" in busy.stderr and "Traceback" not in busy.stderr

    db = sqlite3.connect(data_dir / DB_NAME)
    db.execute("PRAGMA user_version = 999")
    db.commit()
    db.close()
    newer = await wsagent("server", "--data-dir", str(data_dir), "--address", "127.0.0.1:0")
    assert newer.code == 1
    assert "newer" in newer.stderr and "Traceback" not in newer.stderr


async def test_the_server_never_logs_a_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    user = await admin(data_dir, "user", "create", "alice")
    created = await admin(data_dir, "workspace", "create", "--owner", "alice", "--name", "dev")
    agent_id, token = created["agents"][0]["agent_id"], created["agents"][0]["token"]
    session = user["session_token"]
    bogus = "Zz" * 20  # well-formed, unknown
    proc, url = await start_server_process(data_dir)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            for t in (token, session, bogus):
                # Successes, auth failures, 404s and bad input, by header, query and cookie.
                await client.get(f"{ME}/metadata", headers={"Coder-Session-Token": t})
                await client.get(f"{ME}/metadata?coder_session_token={t}")
                await client.post(
                    f"{ME}/report-stats",
                    content=b"{",
                    headers={"Cookie": f"coder_session_token={t}"},
                )
                await client.get(f"/api/v2/workspaceagents/{agent_id}?coder_session_token={t}")
                await client.get(f"/api/v2/nope?coder_session_token={t}")
                await client.get("/api/v2/workspaceagents/nope", headers={"Coder-Session-Token": t})
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        output = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
        await asyncio.wait_for(proc.wait(), 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
    assert "http.request_failed" in output  # the failures were logged ...
    for secret in (token, session, bogus):
        assert secret not in output  # ... without the tokens


async def test_server_applies_a_workspace_file_at_start(tmp_path: Path) -> None:
    spec = tmp_path / "ws.json"
    spec.write_text(
        json.dumps(
            {
                "users": [{"name": "alice"}],
                "workspaces": [{"owner": "alice", "name": "dev", "agents": [{"name": "main"}]}],
            }
        )
    )
    proc, url = await start_server_process(tmp_path / "data", "--apply", str(spec))
    try:
        assert proc.stdout is not None
        printed, line = "", ""
        async with asyncio.timeout(10):
            while line != "}\n":  # the indented JSON document ends with "}" at column 0
                line = (await proc.stdout.readline()).decode()
                assert line, "server exited"
                if line == "{\n" or printed:
                    printed += line
        applied = json.loads(printed)
        token = applied["agents"][0]["token"]
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            metadata = await client.get(f"{ME}/metadata", headers={"Coder-Session-Token": token})
            me = await client.get(
                "/api/v2/users/me", headers={"Coder-Session-Token": applied["users"]["alice"]}
            )
        assert metadata.status_code == 200 and me.json()["username"] == "alice"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        finally:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)


async def test_server_serves_tls_with_the_given_certificate(tmp_path: Path) -> None:
    import ssl

    from tests.e2e.test_tls import make_ca_and_server_cert

    ca, cert, key = make_ca_and_server_cert(tmp_path)
    data_dir = tmp_path / "data"
    await admin(data_dir, "user", "create", "alice")
    created = await admin(data_dir, "workspace", "create", "--owner", "alice", "--name", "dev")
    token = created["agents"][0]["token"]
    proc, url = await start_server_process(data_dir, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert url.startswith("https://127.0.0.1:")
        verify = ssl.create_default_context(cafile=str(ca))
        async with httpx.AsyncClient(base_url=url, verify=verify, timeout=5) as client:
            metadata = await client.get(f"{ME}/metadata", headers={"Coder-Session-Token": token})
        assert metadata.status_code == 200
        # The embedded DERP node is reached over TLS too.
        node = next(iter(metadata.json()["derpmap"]["Regions"].values()))["Nodes"][0]
        assert "ForceHTTP" not in node and node["DERPPort"] == int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=url, timeout=5) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/healthz")  # not a publicly trusted certificate
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        finally:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
