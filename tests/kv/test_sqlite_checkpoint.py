"""SqliteStore copies its WAL back into the database file on a background thread, not in commits.

`file:...?immutable=1` opens the database file while ignoring the WAL, so it shows exactly
what has been checkpointed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from shoal.kv import SqliteStore

ROWS = 3000  # ~6000 WAL frames: past SQLite's default autocheckpoint (1000), under the backstop


def checkpointed_keys(path: Path) -> int:
    """Keys present in the database file itself (the WAL ignored)."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return db.execute("SELECT count(*) FROM kv").fetchone()[0]
    except sqlite3.OperationalError:  # the table itself is still only in the WAL
        return 0
    finally:
        db.close()


async def write(store: SqliteStore, n: int) -> None:
    for i in range(n):
        await store.set(f"/ck/{i:05d}", b"v" * 100)


async def test_commits_do_not_checkpoint_and_the_thread_does(tmp_path: Path):
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, durable=False, checkpoint_interval=3600)
    try:
        await write(store, ROWS)
        assert checkpointed_keys(path) == 0  # with SQLite's default the commits would have copied most
        assert (await store.get(f"/ck/{ROWS - 1:05d}")) is not None  # readers see the WAL
    finally:
        await store.close()  # the thread's last checkpoint
    assert checkpointed_keys(path) == ROWS


async def test_the_background_checkpoint_follows_writes(tmp_path: Path):
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, durable=False, checkpoint_interval=0.05)
    try:
        await write(store, 500)
        for _ in range(100):
            if checkpointed_keys(path) == 500:
                break
            await asyncio.sleep(0.05)
        assert checkpointed_keys(path) == 500
        assert store._checkpointer is not None and store._checkpointer.runs >= 1
    finally:
        await store.close()


async def test_auto_checkpoints_are_sqlites_default_inside_commits(tmp_path: Path):
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path, durable=False, checkpoints="auto")
    try:
        assert store._checkpointer is None
        await write(store, ROWS)
        assert checkpointed_keys(path) > ROWS // 2  # copied back by the commits themselves
    finally:
        await store.close()
    with pytest.raises(ValueError, match="checkpoints"):
        await SqliteStore.open(tmp_path / "x.db", checkpoints="never")
