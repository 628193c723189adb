"""LmdbStore: the `lmdb` package, one file (plus its lock file), safe for several processes.

Layout, all in LMDB's main database (named sub-databases would cost every write an extra page
for the sub-database record; measured in bench/kv):
  "/..."                 key bytes -> <version u64, revision u64, created_at f64, updated_at f64> + value
  0xFE + u64 BE seq      change log, seq = revision << 16 | index
                         -> <event u8, version u64, key length u16> + key + value
Keys start with "/" (0x2F), so the log sorts after every key. The store revision is the newest
log entry (the log always keeps it), so a write touches no extra page for a counter.

LMDB keys are at most 511 bytes; keys of 511 bytes or more live in a "bucket" under their first
511 bytes (a sorted list of (key, record)), which keeps range scans in key order.

Threading is as for SqliteStore (measured in bench/kv): reads and non-durable commits run inline
(~1-5 µs), durable commits (fsync, ~200 µs+) run on one writer thread, in groups
(kv/group_commit.py). LMDB forbids changing the map size while any transaction of the process
is open, so growing the map (MapFullError) or
adopting a size grown by another process (MapResizedError) happens on the event loop thread
while the writer thread is parked.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import lmdb

from .base import (
    KvStore,
    Mutation,
    check_expected,
    check_list_args,
    plan_transaction,
    trim_floor,
    validate_ops,
)
from .errors import KvError, StoreBusy, StoreClosed, VersionConflict
from .group_commit import GroupCommitter
from .keys import check_key, check_prefix, record_codec
from .model import EVENT_TYPES, Entry, Event, Limits, TransactionOp, TxnResult

T = TypeVar("T")

_codec = record_codec()  # ext/kvrecord.pyx (or its twin): the record layout below, one C call each
decode_entry = _codec.decode_entry
encode_record = _codec.encode_record
encode_change = _codec.encode_change
record_version = _codec.record_version

HDR = struct.Struct("<QQdd")
HDR_SIZE = HDR.size
CHG = struct.Struct("<BQH")
SEQ = struct.Struct(">BQ")  # (LOG, seq)
LOG = 0xFE
LOG_START = b"\xfe"
U64 = struct.Struct("<Q")
BKT = struct.Struct("<HI")
SHORT = 511  # LMDB's maximum key size


class _Grow(Exception):
    """Raised out of a write when the map is full or was resized by another process."""

    def __init__(self, size: int) -> None:
        self.size = size  # 0: adopt the size another process set


def _bucket_decode(buf: bytes) -> dict[bytes, bytes]:
    out = {}
    pos = 0
    n = len(buf)
    while pos < n:
        klen, rlen = BKT.unpack_from(buf, pos)
        pos += BKT.size
        key = bytes(buf[pos : pos + klen])
        pos += klen
        out[key] = bytes(buf[pos : pos + rlen])
        pos += rlen
    return out


def _bucket_encode(items: dict[bytes, bytes]) -> bytes:
    return b"".join(BKT.pack(len(k), len(v)) + k + v for k, v in sorted(items.items()))


def _read_rec(txn: lmdb.Transaction, db: Any, raw: bytes) -> bytes | None:
    if len(raw) < SHORT:
        return txn.get(raw, db=db)
    buf = txn.get(raw[:SHORT], db=db)
    return None if buf is None else _bucket_decode(buf).get(raw)


def _write_rec(txn: lmdb.Transaction, db: Any, raw: bytes, rec: bytes | None) -> None:
    if len(raw) < SHORT:
        if rec is None:
            txn.delete(raw, db=db)
        else:
            txn.put(raw, rec, db=db)
        return
    lk = raw[:SHORT]
    buf = txn.get(lk, db=db)
    items = {} if buf is None else _bucket_decode(buf)
    if rec is None:
        items.pop(raw, None)
    else:
        items[raw] = rec
    if items:
        txn.put(lk, _bucket_encode(items), db=db)
    else:
        txn.delete(lk, db=db)


def _scan(txn: lmdb.Transaction, db: Any, start: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, record) pairs from the first LMDB key that can hold `start`, in key order."""
    cur = txn.cursor(db=db)
    if not cur.set_range(start[:SHORT]):
        return
    for k, v in cur:
        if len(k) < SHORT:
            yield k, v
        else:
            yield from sorted(_bucket_decode(v).items())


class LmdbStore(KvStore):
    """A KvStore in one LMDB file. Open with `await LmdbStore.open(path)`."""

    def __init__(self) -> None:  # use open()
        self._group: GroupCommitter | None = None
        self._resize_lock: asyncio.Lock | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        limits: Limits | None = None,
        map_size: int = 64 << 20,
        max_map_size: int = 1 << 40,
        poll_interval: float = 0.005,
        offload_writes: bool | None = None,
        writemap: bool = True,
    ) -> LmdbStore:
        """Open (creating if needed) the store file `path` (and `path`-lock).

        durable: fsync data and meta pages on every commit (survives power loss); otherwise
        MDB_NOSYNC|MDB_NOMETASYNC (survives a process crash; an OS crash may lose recent commits).
        map_size is only the starting size: a full map doubles, up to max_map_size.
        writemap: MDB_WRITEMAP, a writable map: a commit writes its pages in place instead of
        malloc + pwrite per page, which halves a small write here (bench/kv). Copy-on-write is
        unchanged, so a writer killed mid-transaction still leaves the last commit intact. The
        file is then as large as the map (sparse: only written pages use disk). Every process
        opening one file must use the same setting (LMDB's rule), as shoal's always do.
        """
        self = cls()
        self.path = os.fspath(path)
        self.durable = durable
        self.limits = limits or Limits()
        self.poll_interval = poll_interval
        self.max_map_size = max_map_size
        self._offload = durable if offload_writes is None else offload_writes
        env = lmdb.open(
            self.path,
            subdir=False,
            map_size=map_size,
            max_dbs=0,
            sync=durable,
            metasync=durable,
            max_spare_txns=4,
            lock=True,
            writemap=writemap,
        )
        self._env = env
        env.reader_check()  # free reader slots of processes that died (kill -9)
        self._kv = self._chg = None  # both live in the main database
        if self._offload:
            self._group = GroupCommitter(self._commit_batch, "shoal-kv-lmdb", closed=StoreClosed)
        return self

    # -- plumbing ------------------------------------------------------------------------------
    def _fail(self, err: Exception) -> KvError:
        if self._closed:
            return StoreClosed()
        return KvError(f"{self.path}: lmdb error: {err}")

    def _grow_size(self) -> int:
        size = self._env.info()["map_size"]
        if size >= self.max_map_size:
            raise KvError(f"{self.path}: the LMDB map is full at max_map_size={self.max_map_size} bytes")
        return min(size * 2, self.max_map_size)

    def _set_mapsize(self, size: int) -> None:
        """Only with no transaction open in this process (see the module docstring)."""
        if size == 0:
            self._env.set_mapsize(0)
        elif self._env.info()["map_size"] < size:
            self._env.set_mapsize(size)

    async def _resize(self, size: int) -> None:
        if self._resize_lock is None:
            self._resize_lock = asyncio.Lock()
        async with self._resize_lock:
            if self._closed:
                raise StoreClosed()
            if self._group is None:
                self._set_mapsize(size)
                return
            loop = asyncio.get_running_loop()
            parked: asyncio.Future[None] = loop.create_future()
            release = threading.Event()

            def park() -> None:
                loop.call_soon_threadsafe(lambda: parked.done() or parked.set_result(None))
                release.wait()

            done = asyncio.ensure_future(self._group.call(park))
            try:
                await parked
                self._set_mapsize(size)
            finally:
                release.set()
                await done

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read inline; adopt a map grown by another process and retry."""
        while True:
            try:
                return fn(*args)
            except lmdb.MapResizedError:
                await self._resize(0)
            except lmdb.Error as err:
                raise self._fail(err) from err

    async def _write(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """Run body(txn) in a write transaction (inline, or in the writer thread's next group
        commit), growing the map as needed."""
        while True:
            if self._closed:
                raise StoreClosed()
            try:
                if self._group is not None:
                    result = await self._group.write(body)
                else:
                    result = self._wtxn(body)
            except _Grow as grow:
                await self._resize(grow.size or 0)
                continue
            except lmdb.Error as err:
                raise self._fail(err) from err
            self._notify()
            return result

    def _commit_batch(self, items: list[tuple[Callable[..., Any], tuple]]) -> list[tuple[bool, Any]]:
        """group_commit's backend: the bodies in one transaction, one commit (one fsync).

        MDB_WRITEMAP allows no nested transaction, so a body that raises is taken out by
        aborting and running the others again (they see the same state: nothing committed).
        """
        pending = list(range(len(items)))
        out: list[tuple[bool, Any]] = [(False, None)] * len(items)
        while pending:
            try:
                txn = self._env.begin(write=True)
            except lmdb.MapResizedError:
                return self._all(out, pending, _Grow(0))
            failed = None
            try:
                for i in pending:
                    body, args = items[i]
                    try:
                        out[i] = (True, body(txn, *args))
                    except lmdb.Error:
                        raise
                    except Exception as exc:  # this write alone fails (conflict, limit, ...)
                        failed = (i, exc)
                        break
                if failed is None:
                    txn.commit()
                    return out
                txn.abort()
            except (lmdb.MapFullError, lmdb.MapResizedError) as err:
                txn.abort()
                grow = _Grow(self._grow_size() if isinstance(err, lmdb.MapFullError) else 0)
                return self._all(out, pending, grow)
            except BaseException as exc:
                txn.abort()
                return self._all(out, pending, exc)
            out[failed[0]] = (False, failed[1])
            pending.remove(failed[0])
        return out

    @staticmethod
    def _all(out: list, pending: list[int], exc: BaseException) -> list:
        for i in pending:
            out[i] = (False, exc)
        return out

    def _wtxn(self, body: Callable[[lmdb.Transaction], T]) -> T:
        try:
            txn = self._env.begin(write=True)
        except lmdb.MapResizedError:
            raise _Grow(0) from None
        try:
            result = body(txn)
            txn.commit()
            return result
        except lmdb.MapFullError:
            txn.abort()
            raise _Grow(self._grow_size()) from None
        except BaseException:
            txn.abort()
            raise

    @staticmethod
    def _revision_in(txn: lmdb.Transaction) -> int:
        cur = txn.cursor()
        if cur.last():
            k = cur.key()
            if k[0] == LOG:
                return SEQ.unpack(k)[1] >> 16
        return 0

    def _bump(self, txn: lmdb.Transaction) -> int:
        return self._revision_in(txn) + 1

    def _log(
        self, txn: lmdb.Transaction, rev: int, events: list[tuple[int, bytes, int, bytes | None]]
    ) -> None:
        seq = rev << 16
        chg = self._chg
        for i, (code, raw, version, value) in enumerate(events):
            txn.put(SEQ.pack(LOG, seq + i), encode_change(code, version, raw, value), db=chg, append=True)
        self._trim(txn, rev)

    def _trim(self, txn: lmdb.Transaction, rev: int) -> None:
        """Drop change-log entries older than the history kept after revision `rev` (see trim_floor)."""
        oldest = trim_floor(rev, self.limits.history)
        if not oldest:
            return
        floor = SEQ.pack(LOG, oldest << 16)
        cur = txn.cursor(db=self._chg)
        if cur.set_range(LOG_START):
            while cur.key() < floor:
                if not cur.delete():
                    break

    # -- reads ------------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        raw = check_key(key)
        try:
            txn = self._env.begin()
            buf = txn.get(raw) if len(raw) < SHORT else _read_rec(txn, self._kv, raw)
            txn.abort()
        except lmdb.Error:
            buf = await self._read(self._get_raw, raw)
        return None if buf is None else decode_entry(key, buf)

    def _get_raw(self, raw: bytes) -> bytes | None:
        with self._env.begin(db=self._kv) as txn:
            return _read_rec(txn, self._kv, raw)

    async def version(self, key: str) -> int:
        raw = check_key(key)
        buf = await self._read(self._get_raw, raw)
        return 0 if buf is None else record_version(buf)

    def _range(self, prefix: str, start_after: str | None, limit: int | None, full: bool) -> list:
        check_list_args(prefix, start_after, limit)
        pre = check_prefix(prefix)
        bound = pre or b"/"  # keys start with "/"; the change log sorts after them
        after = None if start_after is None else start_after.encode()
        start = pre if after is None or after < pre else after
        out: list = []
        if limit == 0:
            return out
        with self._env.begin(db=self._kv) as txn:
            for k, v in _scan(txn, self._kv, start):
                if k < pre or (after is not None and k <= after):
                    continue
                if not k.startswith(bound):
                    break
                if full:
                    out.append(decode_entry(k.decode(), bytes(v)))
                else:
                    out.append(k.decode())
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        return await self._read(self._range, prefix, start_after, limit, False)

    async def entries(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[Entry]:
        return await self._read(self._range, prefix, start_after, limit, True)

    async def revision(self) -> int:
        return await self._read(self._current_revision_raw)

    def _current_revision_raw(self) -> int:
        with self._env.begin() as txn:
            return self._revision_in(txn)

    # -- writes -----------------------------------------------------------------------------
    async def set(self, key: str, value: bytes) -> int:
        raw = check_key(key)
        value = self.limits.check_value(value)
        return await self._write(lambda txn: self._set(txn, raw, value))

    def _set(self, txn: lmdb.Transaction, raw: bytes, value: bytes) -> int:
        short = len(raw) < SHORT
        cur = txn.get(raw) if short else _read_rec(txn, self._kv, raw)
        rev = self._bump(txn)
        now = time.time()
        if cur is None:
            version, created = 1, now
        else:
            version = record_version(cur) + 1
            created = HDR.unpack_from(cur)[2]
        rec = encode_record(version, rev, created, now, value)
        if short:
            txn.put(raw, rec)
        else:
            _write_rec(txn, self._kv, raw, rec)
        txn.put(
            SEQ.pack(LOG, rev << 16),
            encode_change(1 if version == 1 else 2, version, raw, value),
            append=True,
        )
        if trim_floor(rev, self.limits.history):
            self._trim(txn, rev)
        return version

    async def delete(self, key: str) -> bool:
        raw = check_key(key)
        return await self._write(lambda txn: self._delete(txn, raw))

    def _delete(self, txn: lmdb.Transaction, raw: bytes) -> bool:
        if _read_rec(txn, self._kv, raw) is None:
            return False
        _write_rec(txn, self._kv, raw, None)
        rev = self._bump(txn)
        self._log(txn, rev, [(3, raw, 0, None)])
        return True

    async def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        raw = check_key(key)
        check_expected(expected_version)
        value = self.limits.check_value(value)
        return await self._write(lambda txn: self._cas(txn, key, raw, expected_version, value))

    def _cas(self, txn: lmdb.Transaction, key: str, raw: bytes, expected: int, value: bytes) -> int:
        cur = _read_rec(txn, self._kv, raw)
        found = 0 if cur is None else U64.unpack_from(cur)[0]
        if found != expected:
            raise VersionConflict(key, expected, found)
        return self._set(txn, raw, value)

    async def transaction(self, ops: Sequence[TransactionOp]) -> TxnResult:
        checked = validate_ops(ops, self.limits)
        return await self._write(lambda txn: self._txn(txn, checked))

    def _txn(self, txn: lmdb.Transaction, ops: list[TransactionOp]) -> TxnResult:
        kv = self._kv

        def version_of(key: str) -> int:
            cur = _read_rec(txn, kv, key.encode())
            return 0 if cur is None else U64.unpack_from(cur)[0]

        versions, deleted, writes = plan_transaction(ops, version_of)
        if not writes:
            return TxnResult(self._revision_in(txn), versions, deleted)
        rev = self._bump(txn)
        self._log(txn, rev, self._apply(txn, rev, writes))
        return TxnResult(rev, versions, deleted)

    def _apply(self, txn: lmdb.Transaction, rev: int, writes: list[Mutation]) -> list:
        kv = self._kv
        now = time.time()
        events = []
        for key, value, version in writes:
            raw = key.encode()
            if value is None:
                _write_rec(txn, kv, raw, None)
                events.append((3, raw, 0, None))
                continue
            created = now
            if version > 1:
                created = HDR.unpack_from(_read_rec(txn, kv, raw))[2]
            _write_rec(txn, kv, raw, encode_record(version, rev, created, now, value))
            events.append((1 if version == 1 else 2, raw, version, value))
        return events

    # -- change log (sync, for the watch hub) ----------------------------------------------------
    def _sync(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except lmdb.MapResizedError:
            if self._group is None:
                self._set_mapsize(0)
                return fn()
            asyncio.get_running_loop().create_task(self._resize(0))
            raise StoreBusy("the LMDB map is being resized") from None
        except lmdb.Error as err:
            raise self._fail(err) from err

    def _current_revision(self) -> int:
        return self._sync(self._current_revision_raw)

    def _oldest_revision(self) -> int:
        def read() -> int:
            with self._env.begin() as txn:
                cur = txn.cursor()
                if cur.set_range(LOG_START):
                    return SEQ.unpack(cur.key())[1] >> 16
                return 1  # an empty log: nothing written yet

        return self._sync(read)

    def _changes(self, after: int, upto: int) -> list[Event]:
        def read() -> list[Event]:
            out = []
            end = SEQ.pack(LOG, (upto + 1) << 16)
            types = EVENT_TYPES
            with self._env.begin() as txn:
                cur = txn.cursor()
                if not cur.set_range(SEQ.pack(LOG, (after + 1) << 16)):
                    return out
                for k, v in cur:
                    if k >= end:
                        break
                    code, version, klen = CHG.unpack_from(v)
                    pos = CHG.size + klen
                    key = bytes(v[CHG.size : pos]).decode()
                    value = None if code == 3 else bytes(v[pos:])
                    out.append(Event(types[code], key, value, version, SEQ.unpack(k)[1] >> 16))
            return out

        return self._sync(read)

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        if self._group is not None:
            await asyncio.to_thread(self._group.close)
        self._env.close()
