"""The README tells a new user what scripts/setup does and how to get `wsagent` on PATH."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _apt_packages() -> set[str]:
    setup = (REPO / "scripts" / "setup").read_text()
    found: set[str] = set()
    for names in re.findall(r"need_apt\+=\(([^)]*)\)", setup):
        found.update(names.split())
    return found


def test_readme_names_every_package_setup_installs() -> None:
    readme = (REPO / "README.md").read_text()
    packages = _apt_packages()
    assert {"git", "cloud-init", "chromium"} <= packages  # the parse found them
    missing = sorted(p for p in packages if f"`{p}`" not in readme)
    assert missing == [], f"README does not say setup installs {missing}"


def test_readme_says_once_how_to_get_wsagent_on_path() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme.count("source .venv/bin/activate") == 1


def test_setup_disables_a_cloud_init_it_installed() -> None:
    """Installing Debian's cloud-init enables its boot services; setup turns them off when
    it was the one that installed the package."""
    setup = (REPO / "scripts" / "setup").read_text()
    assert "systemctl disable" in setup
    assert "/etc/cloud/cloud-init.disabled" in setup
