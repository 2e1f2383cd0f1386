"""packaging/cloud-init/user-data.yaml: valid for cloud-init's own schema validator (the
Debian `cloud-init` package; scripts/setup installs it), and its inline unit is
systemd/wsagent.service byte for byte, so the two cannot drift apart."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

USER_DATA = REPO / "packaging" / "cloud-init" / "user-data.yaml"
UNIT_PATH = "/etc/systemd/system/wsagent.service"


def inline_file(text: str, path: str) -> tuple[str, list[str]]:
    """The literal block (``content: |``) of the write_files entry for ``path``, and the
    entry's other lines. A few lines of parsing: the test venv has no YAML library."""
    lines = text.splitlines()
    start = lines.index(f"  - path: {path}")
    entry: list[str] = []
    index = start + 1
    while index < len(lines) and lines[index].startswith("    "):
        if lines[index] == "    content: |":
            break
        entry.append(lines[index].strip())
        index += 1
    block = []
    for line in lines[index + 1 :]:
        if line and not line.startswith("      "):
            break
        block.append(line[6:])
    return "\n".join(block).rstrip("\n") + "\n", entry


def test_inline_unit_is_the_shipped_unit() -> None:
    content, _ = inline_file(USER_DATA.read_text(), UNIT_PATH)
    assert content == (REPO / "systemd" / "wsagent.service").read_text()


def test_environment_file_is_private_and_names_the_server() -> None:
    content, entry = inline_file(USER_DATA.read_text(), "/etc/wsagent/agent.env")
    assert 'permissions: "0600"' in entry and "owner: root:root" in entry
    assert "CODER_AGENT_URL=https://" in content


def test_installs_and_starts_the_unit() -> None:
    text = USER_DATA.read_text()
    assert text.startswith("#cloud-config\n")
    assert "/opt/wsagent/bin/pip install" in text
    assert "  - [systemctl, enable, --now, wsagent.service]" in text


@pytest.mark.e2e
@pytest.mark.skipif(
    shutil.which("cloud-init") is None,
    reason="cloud-init not installed (Debian package `cloud-init`; scripts/setup installs it)",
)
def test_cloud_init_schema_validates() -> None:
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(USER_DATA)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Valid cloud-config" in output and "deprecat" not in output.lower(), output
