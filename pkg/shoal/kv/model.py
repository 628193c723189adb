"""The values the store hands out: entries, events, transaction ops and results, limits."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec

from .errors import LimitExceeded


class Entry(msgspec.Struct, frozen=True, gc=False):
    """One key as stored. `revision` is the store-wide revision of its last write (etcd's mod_revision)."""

    key: str
    value: bytes
    version: int
    created_at: float
    updated_at: float
    revision: int


class EventType(enum.StrEnum):
    Created = "Created"
    Updated = "Updated"
    Deleted = "Deleted"


# Compact codes used in the change logs on disk.
EVENT_CODES: dict[EventType, int] = {EventType.Created: 1, EventType.Updated: 2, EventType.Deleted: 3}
EVENT_TYPES: dict[int, EventType] = {v: k for k, v in EVENT_CODES.items()}


class Event(msgspec.Struct, frozen=True, gc=False):
    """A committed change. `version` is the key's version after it (0 for Deleted); `value` is None for Deleted."""

    event_type: EventType
    key: str
    value: bytes | None
    version: int
    revision: int


class TransactionOp(msgspec.Struct, frozen=True, gc=False):
    """One operation of `transaction()`; build it with the `check_version`, `set` and `delete` constructors."""

    kind: str  # "check" | "set" | "delete"
    key: str
    value: bytes | None = None
    version: int = 0

    @staticmethod
    def check_version(key: str, version: int) -> TransactionOp:
        """Require `key` to be at `version` (0: absent) before the transaction writes anything."""
        return TransactionOp("check", key, None, version)

    @staticmethod
    def set(key: str, value: bytes) -> TransactionOp:
        return TransactionOp("set", key, value)

    @staticmethod
    def delete(key: str) -> TransactionOp:
        return TransactionOp("delete", key)


class TxnResult(msgspec.Struct, frozen=True, gc=False):
    """What a transaction did.

    `revision` is the store revision after it (unchanged if it wrote nothing); `versions[i]` is the
    version of op i's key right after op i: the checked version for a check, the new version for a
    set, 0 for a delete. `deleted[i]` tells whether op i deleted an existing key.
    """

    revision: int
    versions: list[int]
    deleted: list[bool]


@dataclass(frozen=True, slots=True)
class Limits:
    """Configurable limits; exceeding one raises LimitExceeded before anything is written.

    history: how many revisions of change log are kept for watch replay (etcd's compaction).
    """

    max_value_bytes: int = 1 << 20
    max_txn_ops: int = 128
    history: int = 10_000

    def __post_init__(self) -> None:
        if not 0 < self.max_value_bytes <= 512 << 20:
            raise ValueError("max_value_bytes must be in 1 .. 512 MiB")
        if not 0 < self.max_txn_ops <= 65_535:
            raise ValueError("max_txn_ops must be in 1 .. 65535")
        if self.history < 1:
            raise ValueError("history must be at least 1 revision")

    def check_value(self, value: object) -> bytes:
        """The value as bytes, or TypeError / LimitExceeded."""
        if type(value) is not bytes:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(f"values are bytes, got {type(value).__name__}")
            value = bytes(value)
        if len(value) > self.max_value_bytes:
            raise LimitExceeded("value size in bytes", self.max_value_bytes, len(value))
        return value
