"""Packages: the wheel, the sdist and the .deb are built, unpacked and run.

The .deb is unpacked with ``dpkg -x`` into a scratch root. Its venv's shebangs say
/opt/wsagent (where dpkg puts it), so from the scratch root the console script is run with
the scratch root's interpreter; where a private mount namespace is available (root, as in
CI) the scratch /opt/wsagent is also bind-mounted at /opt/wsagent and the installed
/usr/bin/wsagent symlink is run as is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from wscommon import __version__

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "packaging" / "deb" / "build.sh"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # Building installs the package and its dependencies into a fresh venv: about a
    # minute on a quiet 2-core machine, several under load. Slow is not wrong here.
    pytest.mark.timeout(480),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed"),
]


def _run(argv: list[str], timeout: float = 420.0, **kwargs: object) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return str(done.stdout)


def _namespace_run(root: Path) -> str | None:
    """``/usr/bin/wsagent --version`` with the scratch venv mounted at /opt/wsagent, or None
    when no private mount namespace can be made here."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    script = (
        "mount --make-rprivate / && mount -t tmpfs tmpfs /opt && mkdir /opt/wsagent && "
        f'mount --bind "{root}/opt/wsagent" /opt/wsagent && "{root}/usr/bin/wsagent" --version'
    )
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        return None  # no namespaces in this sandbox; the scratch-root run below still counts
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wheel_sdist_and_deb_build_unpack_and_run(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    env = {**os.environ, "HOST_PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    deb = Path(_run([str(BUILD), "-o", str(out)], env=env).strip().splitlines()[-1])

    wheel = out / f"wsagent-{__version__}-py3-none-any.whl"
    sdist = out / f"wsagent-{__version__}.tar.gz"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        entry_points = whl.read(f"wsagent-{__version__}.dist-info/entry_points.txt").decode()
    assert {"agent/metrics.py", "controlplane/server.py", "wsagent/__main__.py"} <= names
    assert "wsagent = wsagent.__main__:main" in entry_points
    # The browser assets scripts/setup builds (gitignored) ship in the wheel, via the sdist.
    built = {f"controlplane/static/{p.name}" for p in (REPO / "controlplane" / "static").iterdir()}
    assert "controlplane/static/terminal.js" in built and built <= names
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "agent/compose.py", "packaging/deb/build.sh"} <= members

    assert deb.is_file() and deb.parent == out
    control = _run(["dpkg-deb", "--field", str(deb)])
    assert f"Version: {__version__}" in control and "Depends: python3." in control

    root = tmp_path / "root"
    _run(["dpkg", "-x", str(deb), str(root)])
    assert os.readlink(root / "usr/bin/wsagent") == "/opt/wsagent/bin/wsagent"
    units = {p.name for p in (REPO / "systemd").iterdir() if p.suffix == ".service"}
    assert units and units <= {p.name for p in (root / "usr/lib/systemd/system").iterdir()}
    script = root / "opt/wsagent/bin/wsagent"
    assert script.read_text().startswith("#!/opt/wsagent/bin/python")

    # The venv's interpreter finds its pyvenv.cfg wherever it is started from.
    python = root / "opt/wsagent/bin/python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    version = _run([str(python), str(script), "--version"], timeout=30, env=env, cwd=tmp_path)
    assert version.strip() == f"wsagent v{__version__}"
    prefix = _run([str(python), "-c", "import sys, aiohttp; print(sys.prefix)"], env=env)
    assert Path(prefix.strip()) == root / "opt/wsagent"  # self-contained: not the test venv

    installed = _namespace_run(root)
    if installed is not None:
        assert installed.strip() == f"wsagent v{__version__}"
