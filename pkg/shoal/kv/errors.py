"""Typed errors of the KV store: callers branch on the type, people read the message."""

from __future__ import annotations


class KvError(Exception):
    """Base class of every error the store raises on purpose."""


class InvalidKey(KvError):
    """A key, prefix or watch pattern that breaks the key rules (checked before any work)."""

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid key {key!r}: {reason}")


class VersionConflict(KvError):
    """A compare-and-set or transaction check saw another version than the caller expected."""

    def __init__(self, key: str, expected: int, found: int) -> None:
        self.key = key
        self.expected = expected
        self.found = found
        super().__init__(f"version conflict on {key!r}: expected version {expected}, found {found}")


class NotFound(KvError):
    """The key does not exist (only where absence is an error, e.g. `require`)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"key not found: {key!r}")


class LimitExceeded(KvError):
    """A request over a configured limit (value size, operations per transaction)."""

    def __init__(self, what: str, limit: int, actual: int) -> None:
        self.what = what
        self.limit = limit
        self.actual = actual
        super().__init__(f"{what} is {actual}, over the limit of {limit}")


class Compacted(KvError):
    """Watch history older than the oldest retained revision was asked for (or a watcher fell behind it)."""

    def __init__(self, requested: int, oldest: int) -> None:
        self.requested = requested
        self.oldest = oldest
        super().__init__(f"revision {requested} has been compacted; the oldest retained revision is {oldest}")


class StoreClosed(KvError):
    """The store was closed; no further operations are possible."""

    def __init__(self) -> None:
        super().__init__("the store is closed")


class ValueNotJson(KvError, ValueError):
    """get_json of a value that is not JSON (the key holds something else)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"the value of {key!r} is not JSON: {reason}")
        self.key = key


class StoreBusy(KvError):
    """Another process held the write lock for longer than the busy timeout."""


class StoreUnavailable(StoreBusy):
    """A networked store (etcd) could not be reached within its timeout; safe to retry later."""
