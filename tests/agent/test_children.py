"""agent.children: reading group membership from a /proc-shaped directory."""

from __future__ import annotations

from pathlib import Path

from agent.children import _has_live_member


def fake_proc(tmp_path: Path, stats: dict[int, str]) -> str:
    for pid, stat in stats.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat)
    (tmp_path / "self").mkdir()
    return str(tmp_path)


def test_zombie_members_do_not_count_as_alive(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: "10 (sleep) Z 1 77 77 0", 11: "11 (sh) S 1 12 12 0"})
    assert not _has_live_member(77, proc)
    assert _has_live_member(12, proc)


def test_command_names_with_spaces_and_parens_parse(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {20: "20 (my (odd) cmd) R 1 55 55 0"})
    assert _has_live_member(55, proc)


def test_missing_proc_trusts_killpg(tmp_path: Path) -> None:
    assert _has_live_member(1, str(tmp_path / "absent"))
