"""Run ``python -m wsagent`` subprocesses for the control plane's CLI tests."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import REPO


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CODER_", "WSAGENT_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def wsagent(*args: str, timeout: float = 30.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsagent",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
        cwd=str(REPO),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class Where:
    """A control plane's state: its data directory and, on PostgreSQL, its database."""

    data_dir: Path
    database_url: str = ""

    def flags(self) -> list[str]:
        flags = ["--data-dir", str(self.data_dir)]
        return [*flags, "--database-url", self.database_url] if self.database_url else flags


async def admin(where: Path | Where, *args: str) -> Any:
    """``wsagent admin --data-dir D --json ...``; asserts success, returns the JSON."""
    if isinstance(where, Path):
        where = Where(where)
    result = await wsagent("admin", *where.flags(), "--json", *args)
    assert result.code == 0, (result.code, result.stderr)
    return result.json
