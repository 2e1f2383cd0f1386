"""The tests' throwaway PostgreSQL: a cluster whose creating process died without its
teardown is stopped and removed by the next run's sweep, and a live owner's is left."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import OWNER_FILE, PgCluster, PgUnavailable, sweep_orphans

pytestmark = pytest.mark.e2e


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory PostgreSQL's unprivileged account can reach (pytest's tmp_path is
    private to root when the tests run as root)."""
    path = Path(tempfile.mkdtemp(prefix="wsagent-pgsweep-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _cluster_in(tmp: Path, owner: int) -> PgCluster:
    try:
        base = tmp / "wsagent-pg-test"
        base.mkdir()
        (base / OWNER_FILE).write_text(str(owner))
        cluster = PgCluster(base)
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    cluster.init()
    cluster.start()
    return cluster


def _running(pid: int) -> bool:
    """Alive and not a zombie (the detached postmaster's parent is whoever adopts it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def test_a_cluster_whose_owner_died_is_stopped_and_removed(scratch: Path) -> None:
    cluster = _cluster_in(scratch, _dead_pid())
    server = _postmaster_pid(cluster)
    try:
        assert sweep_orphans(scratch) == [cluster.base]
        assert not cluster.base.exists()
        # pg_ctl stop -w returned only once the postmaster had exited.
        assert not _running(server)
    finally:
        cluster.destroy()


def test_a_live_owners_cluster_is_left_running(scratch: Path) -> None:
    cluster = _cluster_in(scratch, os.getpid())
    try:
        assert sweep_orphans(scratch) == []
        assert _running(_postmaster_pid(cluster))
    finally:
        cluster.destroy()
