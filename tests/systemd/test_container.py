"""packaging/container/Dockerfile: docker cannot build here, so its conventions are linted
(the PID 1 behaviour itself is exercised in tests/e2e/daemon/test_pid1.py, in a PID namespace).
"""

from __future__ import annotations

import json
import re

from tests.conftest import REPO

DOCKERFILE = REPO / "packaging" / "container" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    last_from = max(i for i, (word, _) in enumerate(found) if word == "FROM")
    return found[last_from:]


def test_entrypoint_is_the_agent_in_exec_form() -> None:
    entry = [rest for word, rest in instructions() if word == "ENTRYPOINT"]
    assert len(entry) == 1
    # Exec form (JSON): the agent itself is PID 1, with no shell or init in front of it.
    assert json.loads(entry[0]) == ["/opt/wsagent/bin/wsagent", "agent"]
    unit = (REPO / "systemd" / "wsagent.service").read_text()
    assert "ExecStart=/opt/wsagent/bin/wsagent agent" in unit  # one install layout
    code = " ".join(rest for _, rest in instructions())
    assert "tini" not in code and "dumb-init" not in code
    assert ("STOPSIGNAL", "SIGTERM") in instructions()


def test_runs_as_the_workspace_user_with_its_volumes() -> None:
    final = instructions()
    assert ("USER", "coder") in final
    volumes = [json.loads(rest) for word, rest in final if word == "VOLUME"]
    assert volumes == [["/home/coder", "/var/log/wsagent"]]
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "CODER_AGENT_LOG_DIR=/var/log/wsagent" in env
    assert "CODER_AGENT_TOKEN" not in env  # a token is given at run time, never baked in


def test_conventions_are_documented() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    header = DOCKERFILE.read_text()
    for name in ("CODER_AGENT_URL", "CODER_AGENT_TOKEN", "/home/coder", "/var/log/wsagent"):
        assert name in header, name
        assert name in docs, name
    assert "packaging/container/Dockerfile" in docs
