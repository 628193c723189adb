"""The store interface every backend implements, plus the semantics they share.

Shared here so the three backends cannot drift: op validation, the transaction planner (checks
first, then writes, in order), JSON helpers, watch registration and the context manager. Each
backend adds its storage and its fast paths for the single-key operations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Self

import orjson

from .errors import LimitExceeded, NotFound, StoreClosed, ValueNotJson, VersionConflict
from .keys import check_key, check_prefix, parse_pattern
from .model import Entry, Limits, TransactionOp, TxnResult
from .watch import Watch, WatchHub

# A planned write: (key, value or None for a delete, version after the write).
Mutation = tuple[str, bytes | None, int]


def trim_floor(rev: int, history: int) -> int:
    """The oldest revision the change log keeps after the commit of `rev`; 0: do not trim now.

    Trimming every commit would dirty the log's first page on every write (a whole extra page in
    the WAL / copy-on-write path), so it happens every `step` revisions: the log holds between
    `history` and `history + step - 1` revisions. The rule is the same on every backend.
    """
    step = max(1, min(64, history // 8))
    if rev % step or rev <= history:
        return 0
    return rev - history + 1


def validate_ops(ops: Sequence[TransactionOp], limits: Limits) -> list[TransactionOp]:
    """Every op well-formed, every key valid and every value within limits, before anything runs."""
    ops = list(ops)
    if len(ops) > limits.max_txn_ops:
        raise LimitExceeded("operations in one transaction", limits.max_txn_ops, len(ops))
    out = []
    for op in ops:
        if not isinstance(op, TransactionOp):
            raise TypeError(f"transaction ops are TransactionOp, got {type(op).__name__}")
        check_key(op.key)
        if op.kind == "set":
            value = limits.check_value(op.value)
            if value is not op.value:
                op = TransactionOp("set", op.key, value)
        elif op.kind == "check":
            if type(op.version) is not int or op.version < 0:
                raise ValueError(f"expected version must be an int >= 0, got {op.version!r}")
        elif op.kind != "delete":
            raise ValueError(f"unknown transaction op {op.kind!r}")
        out.append(op)
    return out


def plan_transaction(
    ops: list[TransactionOp], version_of: Callable[[str], int]
) -> tuple[list[int], list[bool], list[Mutation]]:
    """Evaluate every check against the state before the transaction, then plan the writes in order.

    Raises VersionConflict (first failing check, in op order) before any write is planned.
    A missing key compares as version 0; a delete of a missing key writes nothing.
    """
    before: dict[str, int] = {}
    for op in ops:
        if op.kind == "check":
            found = before.get(op.key)
            if found is None:
                found = before[op.key] = version_of(op.key)
            if found != op.version:
                raise VersionConflict(op.key, op.version, found)
    now: dict[str, int] = {}
    versions: list[int] = []
    deleted: list[bool] = []
    writes: list[Mutation] = []
    for op in ops:
        key = op.key
        if op.kind == "check":
            versions.append(op.version)
            deleted.append(False)
            continue
        cur = now.get(key)
        if cur is None:
            cur = before.get(key)
            if cur is None:
                cur = before[key] = version_of(key)
        if op.kind == "set":
            now[key] = cur + 1
            writes.append((key, op.value, cur + 1))
            versions.append(cur + 1)
            deleted.append(False)
        else:
            now[key] = 0
            if cur:
                writes.append((key, None, 0))
            versions.append(0)
            deleted.append(bool(cur))
    return versions, deleted, writes


class KvStore(ABC):
    """A versioned key-value store: the same async API and semantics on every backend."""

    limits: Limits
    poll_interval: float | None = None  # how often watchers look for other processes' writes
    _hub: WatchHub | None = None
    _closed: bool = False

    # -- reads ------------------------------------------------------------------------------
    @abstractmethod
    async def get(self, key: str) -> Entry | None:
        """The entry at `key`, or None."""

    @abstractmethod
    async def version(self, key: str) -> int:
        """The key's version, 0 if absent."""

    async def exists(self, key: str) -> bool:
        return await self.version(key) > 0

    @abstractmethod
    async def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Keys starting with `prefix`, in UTF-8 byte order, after `start_after`, at most `limit`."""

    @abstractmethod
    async def entries(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[Entry]:
        """Like `list` but whole entries."""

    @abstractmethod
    async def revision(self) -> int:
        """The store-wide revision: how many write transactions have committed."""

    async def require(self, key: str) -> Entry:
        """The entry at `key`, or NotFound."""
        entry = await self.get(key)
        if entry is None:
            raise NotFound(key)
        return entry

    async def get_json(self, key: str, default: Any = None) -> Any:
        """The value parsed as JSON, or `default` if the key is absent."""
        entry = await self.get(key)
        if entry is None:
            return default
        try:
            return orjson.loads(entry.value)
        except orjson.JSONDecodeError as exc:
            raise ValueNotJson(key, str(exc)) from None

    # -- writes -----------------------------------------------------------------------------
    @abstractmethod
    async def set(self, key: str, value: bytes) -> int:
        """Create or replace; returns the new version."""

    async def set_json(self, key: str, obj: Any) -> int:
        return await self.set(key, orjson.dumps(obj))

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the key (hard: its version reads 0 and a re-create starts at 1); True if it existed."""

    @abstractmethod
    async def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        """Write only if the key is at `expected_version` (0: absent); returns the new version."""

    async def create_if_not_exists(self, key: str, value: bytes) -> bool:
        """Create the key if absent; False (and nothing written) if it exists."""
        try:
            await self.compare_and_set(key, 0, value)
        except VersionConflict:
            return False
        return True

    @abstractmethod
    async def transaction(self, ops: Sequence[TransactionOp]) -> TxnResult:
        """Apply every op or none; every check is evaluated before any write."""

    # -- watch ------------------------------------------------------------------------------
    def watch(self, pattern: str, from_revision: int | None = None) -> Watch:
        """Events for an exact key or a prefix pattern ("/a/*"), committed after now or from a revision.

        `from_revision` replays the retained history from that revision on; older than the oldest
        retained revision raises Compacted (its `oldest` says where history starts).
        """
        self._check_open()
        target, is_prefix = parse_pattern(pattern)
        if self._hub is None:
            self._hub = WatchHub(self)
        return self._hub.add(target, is_prefix, from_revision)

    async def flush_watches(self) -> None:
        """Hand every change committed so far (by any process) to the watchers' buffers now."""
        if self._hub is not None:
            self._hub.poll()

    # -- lifecycle --------------------------------------------------------------------------
    async def close(self) -> None:
        if self._hub is not None:
            self._hub.close()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    def _notify(self) -> None:
        hub = self._hub
        if hub is not None:
            hub.kick()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- change log, for the watch hub (sync, cheap) -----------------------------------------
    @abstractmethod
    def _current_revision(self) -> int: ...

    @abstractmethod
    def _oldest_revision(self) -> int:
        """The oldest revision still in the change log (current + 1 when the log is empty)."""

    @abstractmethod
    def _changes(self, after: int, upto: int) -> list: ...


def check_list_args(prefix: str, start_after: str | None, limit: int | None) -> None:
    check_prefix(prefix)
    if start_after is not None and type(start_after) is not str:
        raise TypeError("start_after is a key (str)")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise ValueError("limit must be an int >= 0")


def check_expected(expected_version: int) -> None:
    if type(expected_version) is not int or expected_version < 0:
        raise ValueError(f"expected version must be an int >= 0, got {expected_version!r}")
