"""shoal.kv: a versioned key-value store with transactions and watch streams.

One async API (KvStore), four backends: MemoryStore (tests), SqliteStore (WAL), LmdbStore and
EtcdStore (an etcd cluster, for state shared across machines; imported on first use, as it loads
gRPC). `open_store` opens the one a service's --store flag names. See docs/kv.md for the semantics
every backend is held to.
"""

from typing import Any

from .base import KvStore
from .errors import (
    Compacted,
    InvalidKey,
    KvError,
    LimitExceeded,
    NotFound,
    StoreBusy,
    StoreClosed,
    StoreUnavailable,
    ValueNotJson,
    VersionConflict,
)
from .factory import STORE_KINDS, add_store_arguments, open_store
from .lmdb_store import LmdbStore
from .memory import MemoryStore
from .model import Entry, Event, EventType, Limits, TransactionOp, TxnResult
from .sqlite_store import SqliteStore
from .watch import Watch

__all__ = [
    "STORE_KINDS",
    "Compacted",
    "Entry",
    "EtcdStore",
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
    "StoreUnavailable",
    "TransactionOp",
    "TxnResult",
    "ValueNotJson",
    "VersionConflict",
    "Watch",
    "add_store_arguments",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "EtcdStore":
        from .etcd import EtcdStore

        return EtcdStore
    raise AttributeError(f"module 'shoal.kv' has no attribute {name!r}")
