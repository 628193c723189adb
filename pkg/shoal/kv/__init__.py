"""shoal.kv: a versioned key-value store with transactions and watch streams.

One async API (KvStore), three backends: MemoryStore (tests), SqliteStore (WAL) and LmdbStore.
See docs/kv.md for the semantics every backend is held to.
"""

from .base import KvStore
from .errors import (
    Compacted,
    InvalidKey,
    KvError,
    LimitExceeded,
    NotFound,
    StoreBusy,
    StoreClosed,
    VersionConflict,
)
from .lmdb_store import LmdbStore
from .memory import MemoryStore
from .model import Entry, Event, EventType, Limits, TransactionOp, TxnResult
from .sqlite_store import SqliteStore
from .watch import Watch

__all__ = [
    "Compacted",
    "Entry",
    "Event",
    "EventType",
    "InvalidKey",
    "KvError",
    "KvStore",
    "LimitExceeded",
    "Limits",
    "LmdbStore",
    "MemoryStore",
    "NotFound",
    "SqliteStore",
    "StoreBusy",
    "StoreClosed",
    "TransactionOp",
    "TxnResult",
    "VersionConflict",
    "Watch",
]
