"""A throwaway PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a
temporary directory, on a free port, with its unix socket inside that directory.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster's files belong to
an unprivileged account (``postgres`` if the Debian package created it, else ``nobody``) and
every server binary runs under it through ``setpriv`` (util-linux) or ``runuser``. The
cluster is tuned for throwaway use (no fsync) and trusts local connections: it only ever
listens on 127.0.0.1 and its own socket directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PgUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def find_bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    raise PgUnavailable("initdb not found (install the postgresql package)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> tuple[list[str], int, int] | None:
    """The command prefix that drops root, and the uid/gid it drops to; None if not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("setpriv"):
            prefix = [
                "setpriv",
                f"--reuid={entry.pw_uid}",
                f"--regid={entry.pw_gid}",
                "--clear-groups",
                "--",
            ]
        elif shutil.which("runuser"):
            prefix = ["runuser", "-u", name, "--"]
        else:
            continue
        return prefix, entry.pw_uid, entry.pw_gid
    raise PgUnavailable("running as root and found no way to run PostgreSQL unprivileged")


PREFIX = "wsagent-pg-"
OWNER_FILE = "owner.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(tmp: Path | None = None) -> list[Path]:
    """Stop and remove clusters whose creating process is gone: a test run killed by a
    timeout or a signal never reaches its teardown, and ``pg_ctl start`` detaches the
    server, so without this each such run leaves a PostgreSQL running."""
    swept = []
    for base in Path(tmp or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = int((base / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if _alive(owner):
            continue
        try:
            PgCluster(base).destroy()
        except (OSError, RuntimeError, subprocess.SubprocessError):
            continue
        swept.append(base)
    return swept


class PgCluster:
    def __init__(self, base: Path | None = None) -> None:
        self.bindir = find_bindir()
        if base is None:
            base = Path(tempfile.mkdtemp(prefix=PREFIX))
            (base / OWNER_FILE).write_text(str(os.getpid()))
        self.base = Path(base)
        self.data = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.port = free_port()
        self._as = _run_as()

    def url(self, database: str = "postgres") -> str:
        """Over the unix socket: on a shared machine its round trips cost less CPU than
        loopback TCP's."""
        return f"postgresql://postgres@/{database}?host={self.sockdir}&port={self.port}"

    def tcp_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        prefix = self._as[0] if self._as else []
        return [*prefix, *args]

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        result = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.base
        )
        if result.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr}{result.stdout}\n{log}"
            )

    def init(self) -> None:
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if self._as:
            _, uid, gid = self._as
            for path in (self.base, self.sockdir):
                os.chown(path, uid, gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.sockdir}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=32MB",
            ]
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


TEMPLATE_DB = "wsagent_template"


class PgTemplate:
    """A cluster with a migrated template database; tests copy it (CREATE DATABASE ...
    TEMPLATE takes ~50 ms) instead of migrating a database each."""

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster

    async def create_database(self) -> str:
        import uuid

        import asyncpg

        name = f"t_{uuid.uuid4().hex}"
        conn = await asyncpg.connect(self.cluster.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE_DB}')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.cluster.url())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def start_template_cluster() -> PgTemplate:
    """Start a cluster and migrate its template database (in a thread of its own, so a
    caller inside a running event loop can use it too)."""
    import asyncio
    import threading

    sweep_orphans()
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.start()

        async def prepare() -> None:
            import asyncpg

            from controlplane.store.pg import PostgresStore

            conn = await asyncpg.connect(cluster.url())
            try:
                await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
            finally:
                await conn.close()
            store = await PostgresStore.open(cluster.url(TEMPLATE_DB), jobs=False)
            await store.close()

        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(prepare())
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
    except BaseException:
        cluster.destroy()
        raise
    return PgTemplate(cluster)
