"""Stores for the kv tests: every backend, in both threading modes of the disk ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.kv import KvStore, Limits, LmdbStore, MemoryStore, SqliteStore

# name -> (backend, durable). Durable disk stores commit on the writer thread, the others inline.
KINDS = {
    "memory": ("memory", False),
    "sqlite": ("sqlite", True),
    "sqlite-inline": ("sqlite", False),
    "lmdb": ("lmdb", True),
    "lmdb-inline": ("lmdb", False),
}


async def open_store(kind: str, path: Path, limits: Limits | None = None, **kw) -> KvStore:
    backend, durable = KINDS[kind]
    if backend == "memory":
        return MemoryStore(limits)
    if backend == "sqlite":
        return await SqliteStore.open(path / "kv.db", durable=durable, limits=limits, **kw)
    return await LmdbStore.open(path / "kv.lmdb", durable=durable, limits=limits, **kw)


@pytest.fixture(params=list(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture
async def store(kind: str, tmp_path: Path) -> AsyncIterator[KvStore]:
    s = await open_store(kind, tmp_path)
    yield s
    await s.close()
