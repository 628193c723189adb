"""MemoryStore: the reference backend, for tests and single-process scratch state."""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence

from .base import (
    KvStore,
    Mutation,
    check_expected,
    check_list_args,
    plan_transaction,
    trim_floor,
    validate_ops,
)
from .errors import VersionConflict
from .keys import check_key, prefix_end
from .model import Entry, Event, EventType, Limits, TransactionOp, TxnResult


class MemoryStore(KvStore):
    """Everything in dicts; same semantics (versions, revisions, change log, limits) as the disk stores."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._data: dict[str, Entry] = {}
        self._keys: list[str] = []  # sorted, for ordered range scans
        self._rev = 0
        self._log: dict[int, list[Event]] = {}
        self._oldest = 1

    # -- reads ------------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        if self._closed:
            self._check_open()
        check_key(key)
        return self._data.get(key)

    async def version(self, key: str) -> int:
        self._check_open()
        check_key(key)
        e = self._data.get(key)
        return 0 if e is None else e.version

    def _range(self, prefix: str, start_after: str | None, limit: int | None) -> list[str]:
        check_list_args(prefix, start_after, limit)
        keys = self._keys
        lo = bisect.bisect_left(keys, prefix)
        if start_after is not None and start_after >= prefix:
            lo = max(lo, bisect.bisect_right(keys, start_after))
        end = prefix_end(prefix)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        if limit is not None:
            hi = min(hi, lo + limit)
        return keys[lo:hi]

    async def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        self._check_open()
        return self._range(prefix, start_after, limit)

    async def entries(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[Entry]:
        self._check_open()
        data = self._data
        return [data[k] for k in self._range(prefix, start_after, limit)]

    async def revision(self) -> int:
        self._check_open()
        return self._rev

    # -- writes -----------------------------------------------------------------------------
    async def set(self, key: str, value: bytes) -> int:
        self._check_open()
        check_key(key)
        value = self.limits.check_value(value)
        cur = self._data.get(key)
        version = 1 if cur is None else cur.version + 1
        self._commit([(key, value, version)])
        return version

    async def delete(self, key: str) -> bool:
        self._check_open()
        check_key(key)
        if key not in self._data:
            return False
        self._commit([(key, None, 0)])
        return True

    async def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        self._check_open()
        check_key(key)
        check_expected(expected_version)
        value = self.limits.check_value(value)
        cur = self._data.get(key)
        found = 0 if cur is None else cur.version
        if found != expected_version:
            raise VersionConflict(key, expected_version, found)
        self._commit([(key, value, found + 1)])
        return found + 1

    async def transaction(self, ops: Sequence[TransactionOp]) -> TxnResult:
        self._check_open()
        checked = validate_ops(ops, self.limits)
        versions, deleted, writes = plan_transaction(checked, self._version_of)
        if writes:
            self._commit(writes)
        return TxnResult(self._rev, versions, deleted)

    def _version_of(self, key: str) -> int:
        e = self._data.get(key)
        return 0 if e is None else e.version

    def _commit(self, writes: list[Mutation]) -> None:
        rev = self._rev = self._rev + 1
        now = time.time()
        data = self._data
        events = []
        for key, value, version in writes:
            if value is None:
                del data[key]
                i = bisect.bisect_left(self._keys, key)
                del self._keys[i]
                events.append(Event(EventType.Deleted, key, None, 0, rev))
                continue
            cur = data.get(key)
            if cur is None:
                bisect.insort(self._keys, key)
                data[key] = Entry(key, value, version, now, now, rev)
                events.append(Event(EventType.Created, key, value, version, rev))
            else:
                data[key] = Entry(key, value, version, cur.created_at, now, rev)
                events.append(Event(EventType.Updated, key, value, version, rev))
        self._log[rev] = events
        floor = trim_floor(rev, self.limits.history)
        while self._oldest < floor:
            self._log.pop(self._oldest, None)
            self._oldest += 1
        self._notify()

    # -- change log ---------------------------------------------------------------------------
    def _current_revision(self) -> int:
        return self._rev

    def _oldest_revision(self) -> int:
        return self._oldest if self._log else self._rev + 1

    def _changes(self, after: int, upto: int) -> list[Event]:
        out: list[Event] = []
        for rev in range(max(after + 1, self._oldest), upto + 1):
            out.extend(self._log.get(rev, ()))
        return out
