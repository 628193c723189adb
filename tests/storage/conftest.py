from __future__ import annotations

import hashlib
import os

import pytest

from shoal.storage import ChunkStore

SMALL_SB = 1 << 20  # 1 MiB superblocks: rotation after a few chunks


def blob(i: int, size: int = 64 * 1024) -> bytes:
    """Deterministic, distinct chunk bytes."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // 32 + 1))[:size]


@pytest.fixture
def make_store(tmp_path):
    stores: list[ChunkStore] = []

    def make(root=None, **kw) -> ChunkStore:
        kw.setdefault("superblock_size", SMALL_SB)
        s = ChunkStore(root or tmp_path / "node", **kw)
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


@pytest.fixture
def store(make_store):
    return make_store()


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
