"""CPU, memory and disk figures for ``wsagent stat``: the host's from /proc, the process's
own cgroup's from /sys/fs/cgroup (v2, or v1's cpu, cpuacct and memory controllers).

The parsers are pure (file text in, numbers out); :class:`Reader` reads the files, with
its roots injectable so tests can point it at a fixture tree.

- Host CPU: two samples of /proc/stat's ``cpu`` line ``interval`` apart; cores used =
  busy share of the elapsed jiffies x CPUs (busy = all but idle and iowait).
- Host memory: /proc/meminfo ``MemTotal - MemAvailable``.
- Cgroup CPU: two samples of the cgroup's usage (v2 ``cpu.stat`` ``usage_usec``, v1
  ``cpuacct.usage`` ns); cores used = usage delta / elapsed. Total: the quota
  (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), else the CPUs this
  process may run on.
- Cgroup memory: usage minus inactive file pages (what ``docker stats`` and the kubelet
  show): v2 ``memory.current - inactive_file``, v1 ``memory.usage_in_bytes -
  total_inactive_file``. Total: the limit, else the host's memory.
- Disk: ``statvfs(path)``: used = (blocks - free blocks) x fragment size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.sdk.errors import WsagentError

# v1 reports "no limit" as a huge number (a page-rounded LONG_MAX).
_UNLIMITED: Final = 1 << 62


class StatError(WsagentError):
    """A figure could not be read (no /proc, no cgroup controller...)."""


@dataclass(frozen=True, slots=True)
class Figure:
    used: float
    total: float | None
    unit: str

    def to_json(self) -> dict[str, object]:
        return {"used": self.used, "total": self.total, "unit": self.unit}

    def text(self) -> str:
        if self.total is None:
            return f"{self.used:.1f} {self.unit}"
        pct = 100 * self.used / self.total if self.total else 0.0
        return f"{self.used:.1f}/{self.total:.1f} {self.unit} ({pct:.0f}%)"


# ------------------------------------------------------------------ parsers (pure)


def parse_proc_stat_cpu(text: str) -> tuple[int, int]:
    """(total jiffies, idle jiffies) of /proc/stat's aggregate ``cpu`` line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal (guest is inside user)
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return sum(values[:8]), idle
    raise StatError("/proc/stat has no cpu line")


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    try:
        return fields["MemTotal"], fields["MemAvailable"]
    except KeyError as exc:
        raise StatError(f"/proc/meminfo has no {exc.args[0]}") from None


def parse_self_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """(v2 path or None, v1 controller -> path) from /proc/self/cgroup."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            if name:
                v1[name] = path
    return v2, v1


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, memory.stat)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_cpu_max(text: str) -> float | None:
    """Cores allowed by v2 ``cpu.max`` (``max 100000`` means no limit)."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


# ------------------------------------------------------------------ reading


class Reader:
    def __init__(
        self,
        proc: Path = Path("/proc"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc = proc
        self.cgroup_root = cgroup_root
        self._sleep = sleep
        self._monotonic = monotonic

    def _read(self, path: Path) -> str:
        try:
            return path.read_text()
        except OSError as exc:
            raise StatError(f"cannot read {path}: {exc.strerror or exc}") from None

    def cpus(self) -> int:
        try:
            return len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            return os.cpu_count() or 1

    # -------------------------------------------------------------- host

    def host_cpu(self, interval: float) -> Figure:
        total1, idle1 = parse_proc_stat_cpu(self._read(self.proc / "stat"))
        self._sleep(interval)
        total2, idle2 = parse_proc_stat_cpu(self._read(self.proc / "stat"))
        ncpu = os.cpu_count() or 1
        elapsed = total2 - total1
        busy = elapsed - (idle2 - idle1)
        used = ncpu * busy / elapsed if elapsed > 0 else 0.0
        return Figure(used, float(ncpu), "cores")

    def host_memory(self, scale: int, unit: str) -> Figure:
        total, available = parse_meminfo(self._read(self.proc / "meminfo"))
        return Figure((total - available) / scale, total / scale, unit)

    # -------------------------------------------------------------- cgroup

    def _cgroup_dir(self, controller: str | None) -> Path:
        """This process's cgroup directory for ``controller`` (None: the v2 hierarchy)."""
        v2, v1 = parse_self_cgroup(self._read(self.proc / "self" / "cgroup"))
        if controller is None:
            if v2 is None or not (self.cgroup_root / "cgroup.controllers").exists():
                raise StatError("no cgroup v2 hierarchy")
            base, path = self.cgroup_root, v2
        else:
            if controller not in v1:
                raise StatError(f"no cgroup v1 {controller} controller")
            base, path = self.cgroup_root / controller, v1[controller]
        candidate = base / path.lstrip("/")
        # Without a cgroup namespace the path is the host's; inside the container the
        # controller's root is the container's own cgroup.
        return candidate if candidate.is_dir() else base

    def _is_v2(self) -> bool:
        return (self.cgroup_root / "cgroup.controllers").exists()

    def cgroup_cpu(self, interval: float) -> Figure:
        if self._is_v2():
            d = self._cgroup_dir(None)

            def usage() -> float:
                return parse_keyed(self._read(d / "cpu.stat"))["usage_usec"] / 1e6

            limit = None
            if (d / "cpu.max").exists():
                limit = parse_cpu_max(self._read(d / "cpu.max"))
        else:
            acct = self._cgroup_dir("cpuacct")
            cpu = self._cgroup_dir("cpu")

            def usage() -> float:
                return int(self._read(acct / "cpuacct.usage")) / 1e9

            quota = int(self._read(cpu / "cpu.cfs_quota_us"))
            period = int(self._read(cpu / "cpu.cfs_period_us"))
            limit = quota / period if quota > 0 and period > 0 else None
        t1, u1 = self._monotonic(), usage()
        self._sleep(interval)
        t2, u2 = self._monotonic(), usage()
        used = (u2 - u1) / (t2 - t1) if t2 > t1 else 0.0
        return Figure(used, limit if limit is not None else float(self.cpus()), "cores")

    def cgroup_memory(self, scale: int, unit: str) -> Figure:
        host_total, _ = parse_meminfo(self._read(self.proc / "meminfo"))
        if self._is_v2():
            d = self._cgroup_dir(None)
            current = int(self._read(d / "memory.current"))
            inactive = parse_keyed(self._read(d / "memory.stat")).get("inactive_file", 0)
            has_max = (d / "memory.max").exists()  # the root cgroup has none
            raw_limit = self._read(d / "memory.max").strip() if has_max else "max"
            limit = None if raw_limit == "max" else int(raw_limit)
        else:
            d = self._cgroup_dir("memory")
            current = int(self._read(d / "memory.usage_in_bytes"))
            stat = parse_keyed(self._read(d / "memory.stat"))
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            limit = int(self._read(d / "memory.limit_in_bytes"))
            if limit >= _UNLIMITED:
                limit = None
        used = max(0, current - inactive)
        total = min(limit, host_total) if limit is not None else host_total
        return Figure(used / scale, total / scale, unit)

    # -------------------------------------------------------------- disk

    def disk(self, path: str, scale: int, unit: str) -> Figure:
        try:
            st = os.statvfs(path)
        except OSError as exc:
            raise StatError(f"cannot stat {path}: {exc.strerror or exc}") from None
        total = st.f_blocks * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return Figure(used / scale, total / scale, unit)
