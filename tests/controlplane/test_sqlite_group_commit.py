"""The SQLite store's group commit: writes that wait together commit together, and one
write's failure is still its own (a real store in a temporary directory; no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controlplane.store.base import Conflict
from controlplane.store.sqlite import SQLiteStore


async def test_a_failing_write_in_a_group_fails_alone(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path)
    try:
        names = [f"user{i}" for i in range(40)] + ["user7"]  # one duplicate name
        results = await asyncio.gather(
            *(store.create_user(name) for name in names), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1 and isinstance(failed[0], Conflict), failed
        assert sorted(u.name for u in await store.list_users()) == sorted(set(names))
    finally:
        await store.close()


async def test_writes_keep_their_order_and_are_visible_when_awaited(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path)
    try:
        user = await store.create_user("alice")
        workspaces = await asyncio.gather(
            *(store.create_workspace(user.id, f"ws{i}") for i in range(30))
        )
        # Every write is committed (and visible to the reader) once its caller resumes.
        for workspace in workspaces:
            assert await store.get_workspace(workspace.id) == workspace
        listed = await store.list_workspaces(user.id)
        assert [w.name for w in listed] == [f"ws{i}" for i in range(30)]
    finally:
        await store.close()


async def test_a_write_after_close_fails_instead_of_hanging(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path)
    await store.close()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(store.create_user("late"), 5)
