"""SSH sessions start through the child registry: process priority reaches them too."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ControlPlane
from tests.e2e.ssh.conftest import SSH, make_ssh_world

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only"),
]


async def test_an_ssh_command_runs_with_nice_5_and_oom_score_adj_998(
    control_plane: ControlPlane, start_agent: Any, tmp_path: Path
) -> None:
    if SSH is None:
        pytest.skip("OpenSSH client not installed")
    world = await make_ssh_world(control_plane, start_agent, tmp_path, CODER_PROC_PRIO_MGMT="1")
    code, out, err = await world.ssh("dev", "echo $(nice) $(cat /proc/self/oom_score_adj)")
    assert code == 0, err
    assert out.decode().split() == [str(os.nice(0) + 5), "998"]
