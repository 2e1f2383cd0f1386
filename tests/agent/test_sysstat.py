"""``wsagent stat``'s figures from fixture /proc and cgroup trees (v1 and v2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.sysstat import (
    Figure,
    Reader,
    StatError,
    parse_cpu_max,
    parse_meminfo,
    parse_proc_stat_cpu,
    parse_self_cgroup,
)

GIB = 1 << 30


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_parsers() -> None:
    assert parse_proc_stat_cpu("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1 2 3 4\n") == (100, 85)
    assert parse_meminfo("MemTotal: 2048 kB\nMemFree: 1 kB\nMemAvailable: 1024 kB\n") == (
        2 << 20,
        1 << 20,
    )
    assert parse_self_cgroup("0::/user.slice\n") == ("/user.slice", {})
    assert parse_self_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/c\n") == (
        None,
        {"memory": "/a/b", "cpu": "/c", "cpuacct": "/c"},
    )
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    with pytest.raises(StatError):
        parse_meminfo("MemTotal: 1 kB\n")


def test_text_and_json() -> None:
    assert Figure(0.25, 2.0, "cores").text() == "0.2/2.0 cores (12%)"
    assert Figure(1.5, None, "GiB").text() == "1.5 GiB"
    assert Figure(1.0, 4.0, "GiB").to_json() == {"used": 1.0, "total": 4.0, "unit": "GiB"}


class Ticker:
    """A fake sleep that moves the fixture's counters forward, and a matching clock."""

    def __init__(self, on_sleep: list[tuple[Path, str]]) -> None:
        self.now = 100.0
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for path, text in self.on_sleep:
            path.write_text(text)

    def monotonic(self) -> float:
        return self.now


def test_cgroup_v2(tmp_path: Path) -> None:
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    write(
        proc, {"self/cgroup": "0::/box\n", "meminfo": "MemTotal: 8388608 kB\nMemAvailable: 0 kB\n"}
    )
    write(
        cg,
        {
            "cgroup.controllers": "cpu memory\n",
            "box/cpu.stat": "usage_usec 1000000\nuser_usec 1\n",
            "box/cpu.max": "200000 100000\n",
            "box/memory.current": str(3 * GIB),
            "box/memory.stat": f"anon 1\ninactive_file {GIB}\n",
            "box/memory.max": str(4 * GIB),
        },
    )
    ticker = Ticker([(cg / "box/cpu.stat", "usage_usec 1500000\n")])
    reader = Reader(proc, cg, sleep=ticker.sleep, monotonic=ticker.monotonic)
    assert reader.cgroup_cpu(1.0) == Figure(0.5, 2.0, "cores")
    assert reader.cgroup_memory(GIB, "GiB") == Figure(2.0, 4.0, "GiB")
    (cg / "box/memory.max").write_text("max\n")
    assert reader.cgroup_memory(GIB, "GiB").total == 8.0  # no limit: the host's memory


def test_cgroup_v1_without_namespace_falls_back_to_the_controller_root(tmp_path: Path) -> None:
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    write(
        proc,
        {
            "self/cgroup": "4:memory:/docker/abc\n3:cpuacct:/docker/abc\n2:cpu:/docker/abc\n",
            "meminfo": "MemTotal: 8388608 kB\nMemAvailable: 0 kB\n",
        },
    )
    write(
        cg,
        {
            "cpuacct/cpuacct.usage": "5000000000\n",
            "cpu/cpu.cfs_quota_us": "-1\n",
            "cpu/cpu.cfs_period_us": "100000\n",
            "memory/docker/abc/memory.usage_in_bytes": str(2 * GIB),
            "memory/docker/abc/memory.stat": f"cache 5\ntotal_inactive_file {GIB // 2}\n",
            "memory/docker/abc/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    ticker = Ticker([(cg / "cpuacct/cpuacct.usage", "5250000000\n")])
    reader = Reader(proc, cg, sleep=ticker.sleep, monotonic=ticker.monotonic)
    cpu = reader.cgroup_cpu(0.5)
    assert cpu.used == pytest.approx(0.5) and cpu.total == reader.cpus()
    assert reader.cgroup_memory(GIB, "GiB") == Figure(1.5, 8.0, "GiB")


def test_host_cpu_and_missing_files(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write(proc, {"stat": "cpu  0 0 0 0 0 0 0 0\n"})
    ticker = Ticker([(proc / "stat", "cpu  30 0 10 50 10 0 0 0\n")])
    reader = Reader(proc, tmp_path / "none", sleep=ticker.sleep, monotonic=ticker.monotonic)
    figure = reader.host_cpu(0.1)
    assert figure.used == pytest.approx(0.4 * figure.total)  # type: ignore[operator]
    with pytest.raises(StatError, match="meminfo"):
        reader.host_memory(GIB, "GiB")
