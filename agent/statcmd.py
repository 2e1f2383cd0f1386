"""``wsagent stat``: CPU, memory and disk usage, for agent metadata scripts (like ``coder
stat``).

    wsagent stat [cpu|mem|disk] [--host] [--path PATH] [--prefix Ki|Mi|Gi|Ti]
                 [-o text|json] [--interval SECONDS]

``cpu`` and ``mem`` report this process's own cgroup (the container's, in a container;
cgroup v2 or v1) unless ``--host`` asks for the whole machine from /proc. ``disk`` reports
the filesystem holding ``--path`` (default ``/``). Without a subcommand all five figures
are printed under ``coder stat``'s names: host_cpu, host_memory, home_disk (the filesystem
of the home directory, or of ``--path``), container_cpu, container_memory. Text output is
``used/total unit (percent)``, e.g. ``0.3/2.0 cores (15%)``; ``-o json`` prints
``{"used": ..., "total": ..., "unit": ...}`` (an object of those without a subcommand).
Exit status 1 with a one-line error when a figure cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

from agent.sysstat import Figure, Reader, StatError

PREFIXES: Final = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
EXIT_FAILURE: Final = 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wsagent stat", description="CPU, memory and disk usage (for metadata scripts)."
    )
    p.add_argument("what", nargs="?", choices=("cpu", "mem", "disk"), default=None)
    p.add_argument("--host", action="store_true", help="the whole machine, not this cgroup")
    p.add_argument(
        "--path",
        default=None,
        help="disk: a path on the filesystem (default /; the home directory for home_disk)",
    )
    p.add_argument("--prefix", choices=tuple(PREFIXES), default="Gi", help="memory/disk unit")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--interval", type=float, default=0.1, help="cpu: seconds between the two samples"
    )
    return p


def figures(args: argparse.Namespace, reader: Reader) -> dict[str, Callable[[], Figure]]:
    scale, unit = PREFIXES[args.prefix], f"{args.prefix}B"
    interval = max(0.01, min(args.interval, 10.0))
    return {
        "host_cpu": lambda: reader.host_cpu(interval),
        "host_memory": lambda: reader.host_memory(scale, unit),
        "home_disk": lambda: reader.disk(args.path or os.path.expanduser("~"), scale, unit),
        "container_cpu": lambda: reader.cgroup_cpu(interval),
        "container_memory": lambda: reader.cgroup_memory(scale, unit),
    }


def main(argv: Sequence[str], reader: Reader | None = None) -> int:
    args = parser().parse_args(list(argv))
    reader = reader or Reader()
    table = figures(args, reader)
    try:
        if args.what is not None:
            name = {
                "cpu": "host_cpu" if args.host else "container_cpu",
                "mem": "host_memory" if args.host else "container_memory",
                "disk": "disk",
            }[args.what]
            if name == "disk":
                figure = reader.disk(args.path or "/", PREFIXES[args.prefix], f"{args.prefix}B")
            else:
                figure = table[name]()
            print(json.dumps(figure.to_json()) if args.output == "json" else figure.text())
            return 0
        results: dict[str, Figure | None] = {}
        errors: dict[str, str] = {}
        for name, read in table.items():
            try:
                results[name] = read()
            except StatError as exc:
                results[name], errors[name] = None, str(exc)
    except StatError as exc:
        print(f"wsagent stat: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.output == "json":
        print(json.dumps({k: v.to_json() if v else None for k, v in results.items()}))
    else:
        for name, value in results.items():
            print(f"{name:<17} {value.text() if value else '- (' + errors[name] + ')'}")
    return 0
