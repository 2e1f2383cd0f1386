"""``wsagent stat`` against this machine: its figures match /proc and the cgroup files of
the test's own cgroup (the command runs in it, as a child of the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]
GIB = 1 << 30
CG = Path("/sys/fs/cgroup")


def stat(*args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "wsagent", "stat", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(REPO),
        check=True,
    ).stdout
    return json.loads(out) if "json" in args else out


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, rest = line.split(":", 1)
        out[name] = int(rest.split()[0]) * 1024
    return out


def own_memory_dir() -> tuple[Path, bool]:
    """The memory cgroup directory of this process, and whether it is cgroup v2."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    if (CG / "cgroup.controllers").exists():
        path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
        d = CG / path.lstrip("/")
        return (d if d.is_dir() else CG), True
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            d = CG / "memory" / path.lstrip("/")
            return (d if d.is_dir() else CG / "memory"), False
    pytest.skip("no memory cgroup")


def cgroup_memory_used() -> int:
    d, v2 = own_memory_dir()
    stat = dict(
        (k, int(v))
        for k, v in (line.split() for line in (d / "memory.stat").read_text().splitlines())
    )
    if v2:
        return int((d / "memory.current").read_text()) - stat.get("inactive_file", 0)
    return int((d / "memory.usage_in_bytes").read_text()) - stat["total_inactive_file"]


def test_host_memory_matches_proc_meminfo() -> None:
    before = meminfo()
    got = stat("mem", "--host", "-o", "json")
    after = meminfo()
    assert got["unit"] == "GiB"
    assert got["total"] * GIB == pytest.approx(before["MemTotal"], abs=1)
    used = [m["MemTotal"] - m["MemAvailable"] for m in (before, after)]
    slack = 256 << 20  # the machine is shared: others allocate meanwhile
    assert min(used) - slack <= got["used"] * GIB <= max(used) + slack


def test_container_memory_matches_the_own_cgroup_files() -> None:
    before = cgroup_memory_used()
    got = stat("mem", "-o", "json", "--prefix", "Mi")
    after = cgroup_memory_used()
    assert got["unit"] == "MiB"
    slack = 128 << 20  # the command's own interpreter is in the cgroup while it runs
    assert min(before, after) - slack <= got["used"] * (1 << 20) <= max(before, after) + slack
    assert got["total"] * (1 << 20) <= meminfo()["MemTotal"] + 1


def test_cpu_totals_and_disk() -> None:
    host = stat("cpu", "--host", "-o", "json")
    assert host["total"] == os.cpu_count() and 0 <= host["used"] <= host["total"] * 1.05
    container = stat("cpu", "-o", "json")
    assert 0 < container["total"] <= len(os.sched_getaffinity(0))
    st = os.statvfs("/")
    disk = stat("disk", "--path", "/", "-o", "json")
    assert disk["total"] * GIB == pytest.approx(st.f_blocks * st.f_frsize, rel=1e-9)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert disk["used"] * GIB == pytest.approx(used, abs=512 << 20)


def test_human_output_and_errors() -> None:
    text = stat()
    names = [line.split()[0] for line in text.splitlines()]
    assert names == ["host_cpu", "host_memory", "home_disk", "container_cpu", "container_memory"]
    assert "cores (" in stat("cpu", "--host")
    bad = subprocess.run(
        [sys.executable, "-m", "wsagent", "stat", "disk", "--path", "/nonexistent/x"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(REPO),
    )
    assert bad.returncode == 1 and bad.stderr.startswith("wsagent stat: cannot stat")


def test_all_figures_carry_coders_names_and_home_disk_is_the_home_directorys(
    tmp_path: Path,
) -> None:
    # coder stat's columns; its disk figure is the home directory's filesystem. A tmpfs home
    # tells it apart from /.
    home = "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "wsagent", "stat", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(REPO),
        check=True,
        env={**os.environ, "HOME": home},
    ).stdout
    figures = json.loads(out)
    assert list(figures) == [
        "host_cpu",
        "host_memory",
        "home_disk",
        "container_cpu",
        "container_memory",
    ]
    st = os.statvfs(home)
    assert figures["home_disk"]["total"] * GIB == pytest.approx(st.f_blocks * st.f_frsize, rel=1e-9)
