"""Control-plane fleets for the load benchmarks: ``wsagent server`` on PostgreSQL, one
replica or several behind HAProxy, on a throwaway PostgreSQL cluster (tests/pgserver.py).

``Fleet.pids`` are the server processes (their CPU and RSS are the "server" figures);
``Fleet.db_pids()`` are PostgreSQL's processes, reported beside them: on this machine the
database shares the same two cores.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from controlplane_load import start_server  # noqa: E402

from tests.pgserver import PgCluster, free_port  # noqa: E402


@dataclass
class Fleet:
    url: str
    database_url: str
    pg: PgCluster
    servers: list[asyncio.subprocess.Process] = field(default_factory=list)
    replica_urls: list[str] = field(default_factory=list)
    haproxy: asyncio.subprocess.Process | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.servers]

    def db_pids(self) -> list[int]:
        """The postmaster and its children (backends, writer, WAL, ...)."""
        try:
            postmaster = int((self.pg.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == postmaster:
                pids.append(int(entry.name))
        return pids

    async def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.returncode is None:
            self.haproxy.terminate()
            await self.haproxy.wait()
        for proc in self.servers:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        await asyncio.to_thread(self.pg.destroy)


async def start_pg() -> PgCluster:
    pg = PgCluster()
    await asyncio.to_thread(pg.init)
    await asyncio.to_thread(pg.start)
    return pg


async def start_fleet(
    pg: PgCluster, data_dir: Path, replicas: int, *extra: str, first_metrics: int = 0
) -> Fleet:
    """``replicas`` servers on ``pg``'s database; several are put behind HAProxy."""
    database_url = pg.url()
    fleet = Fleet("", database_url, pg)
    for i in range(replicas):
        port = free_port()
        metrics = ["--metrics-address=off"]
        if i == 0 and first_metrics:
            metrics = [f"--metrics-address=127.0.0.1:{first_metrics}"]
        proc, url = await start_server(
            data_dir / f"r{i}",
            "normal",
            "--database-url",
            database_url,
            "--replica-id",
            f"r{i}",
            # Later flags win: this replica's own port and URL.
            "--address",
            f"127.0.0.1:{port}",
            "--replica-url",
            f"http://127.0.0.1:{port}",
            *extra,
            *metrics,
        )
        fleet.servers.append(proc)
        fleet.replica_urls.append(url)
    if replicas == 1:
        fleet.url = fleet.replica_urls[0]
        return fleet
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    lb_port = free_port()
    config = data_dir / "haproxy.cfg"
    servers = "\n".join(
        f"    server r{i} {u.removeprefix('http://')} maxconn 9000"
        for i, u in enumerate(fleet.replica_urls)
    )
    config.write_text(
        "global\n    maxconn 9000\n"
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n"
        "    timeout server 120s\n    timeout tunnel 1h\n    maxconn 9000\n"
        f"frontend fe\n    bind 127.0.0.1:{lb_port}\n    default_backend be\n"
        f"backend be\n    balance leastconn\n{servers}\n"
    )
    fleet.haproxy = await asyncio.create_subprocess_exec(
        haproxy,
        "-f",
        str(config),
        "-db",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    fleet.url = f"http://127.0.0.1:{lb_port}"
    # Wait until HAProxy answers.
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"{fleet.url}/healthz") as response:
                    if response.status == 200:
                        return fleet
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    await fleet.stop()
    raise RuntimeError("HAProxy did not start (9,000 connections need a 20,000 fd limit)")
