"""The repository stands on its own: no comment or doc points at a design file, a wire
reference or an issue tracker that is not part of it. Facts the code relies on live in
docs/design.md and docs/protocol.md ("Wire notes"), and comments point there."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

# Built from pieces so this file does not match itself.
FORBIDDEN = re.compile(
    "|".join(
        [
            r"DESIGN" + r"\.md",
            r"reference " + "\N{SECTION SIGN}",
            r"(?<!RFC \d{4} )" + "\N{SECTION SIGN}" + r"\d",
            r"\bissue " + r"#?\d+",
            r"\bshared" + r"/",
        ]
    )
)
ROOTS: tuple[str, ...] = ("agent", "controlplane", "wsagent", "wscommon", "docs", "tests")
ROOTS += ("bench", "systemd", "packaging", "scripts")
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".service", ".sh", ""}


def _files() -> list[Path]:
    found = [REPO / "README.md"]
    for root in ROOTS:
        for path in (REPO / root).rglob("*"):
            if path.is_file() and path.suffix in SUFFIXES and "node_modules" not in path.parts:
                found.append(path)
    return found


def test_no_reference_to_files_outside_the_repository() -> None:
    hits = []
    for path in _files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == [], "\n".join(hits)


def test_the_pattern_catches_what_it_must() -> None:
    section = "\N{SECTION SIGN}"
    for bad in (
        "see DESIGN" + ".md decision 6",
        f"(reference {section}5.8)",
        f"lifecycle ({section}5.3)",
        "Fixes over Coder (issue " + "7)",
        "../shared" + "/reference/x.md",
    ):
        assert FORBIDDEN.search(bad), bad
    assert not FORBIDDEN.search(f"(RFC 5652 {section}5.4)")
