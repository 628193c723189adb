"""shoal.storage: the storage node. 2 MiB chunks in append-only superblock files.

ChunkStore (store.py) is the engine; service.py serves it over HTTP; docs/storage.md
describes the on-disk format and durability rules.
"""

from shoal.storage.store import (
    ChunkConflict,
    ChunkCorrupt,
    ChunkNotFound,
    ChunkStore,
    PutResult,
    StorageFull,
    StoreError,
    chunk_id_ok,
)

__all__ = [
    "ChunkConflict",
    "ChunkCorrupt",
    "ChunkNotFound",
    "ChunkStore",
    "PutResult",
    "StorageFull",
    "StoreError",
    "chunk_id_ok",
]
