"""The unit files in systemd/: `systemd-analyze verify` when it is installed (Debian's
`systemd` package; scripts/setup installs it), and always a lint of what docs/operations.md
promises of them, so a machine without systemd still catches a unit that lost Type=notify or
its watchdog.

`verify` checks that ExecStart's program exists, and /opt/wsagent is not installed on a
test machine: the units are verified from copies whose ExecStart points at a stub script,
everything else byte for byte the same. It exits 0 even on an unknown key or a bad value
(it only warns), so any output at all is a failure here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = REPO / "systemd"
EXEC = "/opt/wsagent/bin/wsagent"
AGENT_UNITS = ("wsagent.service", "wsagent@.service")
LEFT_OUT = (
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "RestrictNamespaces",
    "MemoryDenyWriteExecute",
    "SystemCallFilter",
)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections to keys to values (a key may repeat); comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


@pytest.mark.parametrize("name", AGENT_UNITS)
def test_agent_units_notify_watchdog_restart_and_user(name: str) -> None:
    unit = parse_unit(UNITS / name)
    service = "Service"
    assert one(unit, service, "Type") == "notify"
    assert one(unit, service, "NotifyAccess") == "main"
    assert re.fullmatch(r"\d+s", one(unit, service, "WatchdogSec"))
    assert one(unit, service, "Restart") == "always"
    assert re.fullmatch(r"\d+s", one(unit, service, "RestartSec"))
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"
    assert one(unit, service, "ExecStart") == f"{EXEC} agent"
    assert one(unit, service, "KillMode") == "mixed"
    user = one(unit, service, "User")
    assert user == ("%i" if "@" in name else "coder")
    assert "%i" in one(unit, service, "EnvironmentFile") or "@" not in name
    # Nothing that breaks sudo or users' programs crept in (see the comments in the unit).
    for key in LEFT_OUT:
        assert key not in unit[service], f"{name}: {key} breaks users' shells"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_server_unit_is_locked_down() -> None:
    unit = parse_unit(UNITS / "wsagent-server.service")
    service = unit["Service"]
    assert one(unit, "Service", "ExecStart").startswith(f"{EXEC} server --data-dir=")
    for key in ("DynamicUser", "NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert one(unit, "Service", "StateDirectory") == "wsagent"
    # Far above systemd's soft default of 1,024 file descriptors: each client is one.
    assert int(one(unit, "Service", "LimitNOFILE")) >= 65536


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    stub = tmp_path / "wsagent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for path in sorted(UNITS.glob("*.service")):
        # A template is verified as an instance of itself.
        name = path.name.replace("@.", "@alice.")
        copy = tmp_path / name
        copy.write_text(path.read_text().replace(EXEC, str(stub)))
        copies.append(str(copy))
    assert len(copies) == 3
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_left_out_hardening_is_documented() -> None:
    text = (UNITS / "wsagent.service").read_text()
    docs = (REPO / "docs" / "operations.md").read_text()
    for key in LEFT_OUT:
        assert re.search(rf"^#\s+{key}=", text, re.MULTILINE), f"unit does not explain {key}"
        assert f"`{key}=`" in docs, f"docs/operations.md does not explain {key}"


def test_one_unit_name_everywhere() -> None:
    """The old name is gone from the repository's docs and packaging."""
    assert not (UNITS / "wsagent-agent.service").exists()
    for path in [REPO / "README.md", *(REPO / "docs").glob("*.md"), *REPO.glob("packaging/**/*")]:
        if path.is_file():
            assert "wsagent-agent" not in path.read_text(errors="replace"), path
