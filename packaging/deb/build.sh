#!/usr/bin/env bash
# Build wsagent_<version>_<arch>.deb: a self-contained virtual environment under
# /opt/wsagent, a /usr/bin/wsagent symlink and the systemd units from systemd/.
#
# usage: packaging/deb/build.sh [-o OUTDIR] [-w WHEEL] [-e EXTRAS]
#   -o OUTDIR  where the .deb (and, without -w, the wheel and sdist) go (default: ./dist)
#   -w WHEEL   install this wheel instead of building one from the working tree
#   -e EXTRAS  extras to install (default "server": the server unit ships too; "" for none)
# env: PYTHON   target interpreter (default: /usr/bin/python3 resolved, e.g. python3.11)
#      HOST_PYTHON  runs `build` and pip (default: the repo's .venv, else python3)
#      DEB_COMPRESS dpkg-deb compressor (default gzip: fast; xz for smaller releases)
#
# Relocation. A venv records its own absolute path in a few places, so it is built in a
# staging root at <stage>/opt/wsagent and then fixed up to say /opt/wsagent:
#   * bin/python* are symlinks to the system interpreter (versioned, /usr/bin/python3.X,
#     so a python3 default bump does not silently swap the ABI under the venv); Python finds
#     pyvenv.cfg next to the executable it was started as, so the venv itself moves freely;
#   * script shebangs, activate scripts and pyvenv.cfg's `command` name the staging path:
#     rewritten with sed below;
#   * byte code is compiled after the move with `compileall -s <stage> -p /` so
#     tracebacks name /opt/wsagent paths and an unprivileged agent never writes .pyc files.
# A final grep fails the build if the staging path is left in any file.
# --copies is not used: it would copy the interpreter binary but not libpython or the
# standard library, so it buys no independence from the system python3.X package.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$REPO/dist"
WHEEL=""
EXTRAS="server"
while getopts "o:w:e:" opt; do
    case "$opt" in
        o) OUT=$OPTARG ;;
        w) WHEEL=$OPTARG ;;
        e) EXTRAS=$OPTARG ;;
        *) sed -n '2,12p' "$0" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

PYTHON=${PYTHON:-$(readlink -f /usr/bin/python3)}
if [ -z "${HOST_PYTHON:-}" ]; then
    HOST_PYTHON=python3
    [ -x "$REPO/.venv/bin/python" ] && HOST_PYTHON="$REPO/.venv/bin/python"
fi
command -v dpkg-deb >/dev/null || { echo "build.sh: dpkg-deb is required" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wsagent-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if [ -z "$WHEEL" ]; then
    # Build from a copy of the source tree, so nothing (egg-info, build/) lands in it. In a
    # git checkout: the files git would commit and the built web assets; in an unpacked
    # sdist: everything.
    "$HOST_PYTHON" - "$REPO" "$WORK/src" <<'COPY'
import os, shutil, subprocess, sys
repo, dest = sys.argv[1:]
listed = subprocess.run(
    ["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    capture_output=True,
)
if listed.returncode != 0:
    skip = shutil.ignore_patterns(".git", ".venv", "dist", "build", "*.egg-info", "__pycache__")
    shutil.copytree(repo, dest, ignore=skip, symlinks=True)
    sys.exit(0)
for name in filter(None, listed.stdout.decode().split("\0")):
    source = os.path.join(repo, name)
    if os.path.isfile(source):  # a tracked file deleted in the working tree is skipped
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)
# Plus the browser assets scripts/setup builds from web/: generated, so not in git, but
# shipped in the wheel as package data.
assets = os.path.join("controlplane", "static")
if os.path.isdir(os.path.join(repo, assets)):
    shutil.copytree(os.path.join(repo, assets), os.path.join(dest, assets), dirs_exist_ok=True)
COPY
    "$HOST_PYTHON" -m build --sdist --wheel --outdir "$OUT" "$WORK/src" >"$WORK/build.log" 2>&1 \
        || { cat "$WORK/build.log" >&2; exit 1; }
    VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$WORK/src/pyproject.toml")
    WHEEL="$OUT/wsagent-$VERSION-py3-none-any.whl"
fi
WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
VERSION=$(basename "$WHEEL" | cut -d- -f2)

PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
ARCH=$(dpkg --print-architecture)
STAGE="$WORK/root"
VENV="$STAGE/opt/wsagent"

"$PYTHON" -m venv --without-pip "$VENV"
SPEC="$WHEEL"
[ -n "$EXTRAS" ] && SPEC="wsagent[$EXTRAS] @ file://$WHEEL"
# pip runs from the host environment against the target interpreter (pip >= 22.3), so the
# target needs neither pip nor ensurepip (Debian ships those separately).
"$HOST_PYTHON" -m pip --python "$VENV/bin/python" install --quiet --no-compile \
    --no-warn-script-location --disable-pip-version-check "$SPEC"
# Where the wheel came from is a build-host detail, and names the staging path.
find "$VENV/lib" -path '*wsagent-*.dist-info/direct_url.json' -delete

# Relocate: every text mention of the staging venv becomes /opt/wsagent.
grep -rlI --exclude-dir=__pycache__ "$VENV" "$VENV" | while read -r file; do
    sed -i "s#$VENV#/opt/wsagent#g" "$file"
done
"$VENV/bin/python" -m compileall -q -j0 -s "$STAGE" -p / "$VENV/lib" >/dev/null
if grep -rlI "$STAGE" "$STAGE"; then
    echo "build.sh: the staging path is still named in the files above" >&2
    exit 1
fi

mkdir -p "$STAGE/usr/bin" "$STAGE/usr/lib/systemd/system" "$STAGE/DEBIAN"
ln -s /opt/wsagent/bin/wsagent "$STAGE/usr/bin/wsagent"
for unit in "$REPO"/systemd/*; do
    case "$unit" in
        *.service | *.socket | *.timer | *.path | *.target)
            install -m 0644 "$unit" "$STAGE/usr/lib/systemd/system/" ;;
    esac
done
mkdir -p "$STAGE/usr/share/doc/wsagent"
install -m 0644 "$REPO/docs/operations.md" "$STAGE/usr/share/doc/wsagent/"

cat >"$STAGE/DEBIAN/control" <<CONTROL
Package: wsagent
Version: $VERSION
Architecture: $ARCH
Maintainer: wsagent developers <wsagent@example.com>
Depends: python$PYVER
Section: admin
Priority: optional
Installed-Size: $(du -sk "$STAGE/opt" | cut -f1)
Homepage: https://github.com/wsagent/wsagent
Description: workspace agent daemon speaking Coder's agent API
 A self-contained virtual environment under /opt/wsagent with the agent and the
 reference control plane, the wsagent command and its systemd units. The units are
 installed but not enabled: configure /etc/wsagent first (docs/operations.md).
CONTROL
# systemd picks up new or changed units; nothing is enabled or started for the admin.
cat >"$STAGE/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
exit 0
SCRIPT
cat >"$STAGE/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
exit 0
SCRIPT
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/postrm"

DEB="$OUT/wsagent_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-gzip}" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
