"""SqliteStore: one WAL file, safe for several processes.

Threading, decided by measurement (bench/kv, this machine): a small read or a synchronous=NORMAL
commit costs 4-15 µs inline, while a hop to a worker thread costs ~30 µs, so those run inline on
the event loop. A synchronous=FULL commit waits ~120 µs or more for fsync, so in durable mode the
writes go to one dedicated writer thread (its own connection), which commits all the writes
waiting in one transaction (kv/group_commit.py), and the loop stays free; reads stay inline on a
second connection (WAL readers never wait for the writer).

Writers of all processes serialise on BEGIN IMMEDIATE. Inline, the busy timeout is 0 and the
coroutine backs off with asyncio.sleep instead of blocking the loop; in the writer thread SQLite's
own busy timeout waits.

Change log: `changes(seq = revision << 16 | index)` holds every event, written in the same
transaction as the data and trimmed to the last `limits.history` revisions (see base.trim_floor).

WAL checkpoints run on a background thread, not inside commits (kv/sqlite_checkpoint.py).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
from .keys import check_key, prefix_end
from .model import EVENT_TYPES, Entry, Event, Limits, TransactionOp, TxnResult
from .sqlite_checkpoint import BACKSTOP, Checkpointer

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY,  -- revision << 16 | index within the transaction
    key TEXT NOT NULL,
    event INTEGER NOT NULL,   -- 1 created, 2 updated, 3 deleted
    version INTEGER NOT NULL,
    value BLOB
);
"""

GET = "SELECT value, version, created_at, updated_at, revision FROM kv WHERE key = ?"
VERSION = "SELECT version FROM kv WHERE key = ?"
# The store revision is the newest change log row (the log always keeps it), so a write
# dirties no extra page for a counter.
REVISION = "SELECT max(seq) FROM changes"
UPSERT = (
    "INSERT INTO kv(key, value, version, created_at, updated_at, revision) VALUES (?, ?, 1, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = kv.version + 1, "
    "updated_at = excluded.updated_at, revision = excluded.revision RETURNING version"
)
INSERT = "INSERT INTO kv(key, value, version, created_at, updated_at, revision) VALUES (?, ?, ?, ?, ?, ?)"
UPDATE = "UPDATE kv SET value = ?, version = ?, updated_at = ?, revision = ? WHERE key = ?"
DELETE = "DELETE FROM kv WHERE key = ? RETURNING version"
LOG = "INSERT INTO changes(seq, key, event, version, value) VALUES (?, ?, ?, ?, ?)"
TRIM = "DELETE FROM changes WHERE seq < ?"
CHANGES = "SELECT seq, key, event, version, value FROM changes WHERE seq >= ? AND seq < ? ORDER BY seq"
OLDEST = "SELECT min(seq) FROM changes"


def _busy(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(err) or "busy" in str(err)


class SqliteStore(KvStore):
    """A KvStore in one SQLite file (WAL). Open with `await SqliteStore.open(path)`."""

    def __init__(self) -> None:  # use open()
        self._db: sqlite3.Connection
        self._wdb: sqlite3.Connection | None = None
        self._group: GroupCommitter | None = None
        self._checkpointer: Checkpointer | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        limits: Limits | None = None,
        busy_timeout: float = 10.0,
        poll_interval: float = 0.005,
        offload_writes: bool | None = None,
        checkpoints: str = "background",
        checkpoint_interval: float = 0.2,
    ) -> SqliteStore:
        """Open (creating if needed) the store file.

        durable: synchronous=FULL (fsync per commit: survives power loss) instead of NORMAL
        (survives a process crash). offload_writes: run commits on a writer thread; defaults
        to `durable`, see the module docstring. checkpoints: "background" (a thread copies the
        WAL back, see kv/sqlite_checkpoint.py) or "auto" (SQLite's default: inside commits).
        """
        if checkpoints not in ("background", "auto"):
            raise ValueError(f"checkpoints must be 'background' or 'auto', not {checkpoints!r}")
        self = cls()
        self.path = os.fspath(path)
        self.durable = durable
        self.limits = limits or Limits()
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self._offload = durable if offload_writes is None else offload_writes
        self._autocheckpoint = BACKSTOP if checkpoints == "background" else 1000
        self._db = await asyncio.to_thread(self._connect, self.path, durable, busy_timeout, True)
        self._db.execute("PRAGMA busy_timeout = 0")  # inline: back off in asyncio, never block the loop
        if self._offload:
            self._wdb = await asyncio.to_thread(self._connect, self.path, durable, busy_timeout, False)
            self._group = GroupCommitter(self._commit_batch, "shoal-kv-sqlite", closed=StoreClosed)
        if checkpoints == "background":
            self._checkpointer = Checkpointer(
                lambda: self._connect(self.path, durable, busy_timeout, False), checkpoint_interval
            )
        return self

    def _connect(self, path: str, durable: bool, busy_timeout: float, init: bool) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=64)
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if init:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise KvError(f"{path}: cannot switch SQLite to WAL mode")
            try:
                db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        db.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint}")
        return db

    # -- plumbing ------------------------------------------------------------------------------
    def _fail(self, err: sqlite3.Error) -> KvError:
        if self._closed:
            return StoreClosed()
        if _busy(err):
            return StoreBusy(f"{self.path}: another process held the write lock for {self.busy_timeout}s")
        return KvError(f"{self.path}: sqlite error: {err}")

    async def _retry(self, fn: Callable[..., T], first: sqlite3.Error, *args: Any) -> T:
        """Retry an inline call that hit a lock, sleeping in asyncio between attempts."""
        if self._closed or not _busy(first):
            raise self._fail(first) from first
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.0002
        while True:
            await asyncio.sleep(delay)
            try:
                return fn(*args)
            except sqlite3.Error as err:
                if self._closed or not _busy(err) or time.monotonic() > deadline:
                    raise self._fail(err) from err
            delay = min(delay * 2, 0.01)

    async def _read(self, sql: str, params: tuple) -> list:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            return await self._retry(lambda: self._db.execute(sql, params).fetchall(), err)

    async def _write(self, body: Callable[..., T], *args: Any) -> T:
        """Run body(db, *args) in a write transaction: inline, or in the writer thread's next
        group commit. Bodies never begin, commit or roll back themselves."""
        if self._group is not None:
            if self._closed:
                raise StoreClosed()
            try:
                result = await self._group.write(body, *args)
            except sqlite3.Error as err:
                raise self._fail(err) from err
        else:
            try:
                result = self._in_txn(self._db, body, *args)
            except sqlite3.Error as err:
                result = await self._retry(self._in_txn, err, self._db, body, *args)
        if self._checkpointer is not None:
            self._checkpointer.dirty = True
        self._notify()
        return result

    @staticmethod
    def _in_txn(db: sqlite3.Connection, body: Callable[..., T], *args: Any) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = body(db, *args)
            db.execute("COMMIT")
            return result
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _commit_batch(self, items: list[tuple[Callable[..., Any], tuple]]) -> list[tuple[bool, Any]]:
        """group_commit's backend: one transaction, each body in its own savepoint, one COMMIT."""
        db = self._wdb
        assert db is not None
        out: list[tuple[bool, Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")  # the writer connection's busy timeout waits here
            for body, args in items:
                db.execute("SAVEPOINT w")
                try:
                    out.append((True, body(db, *args)))
                except sqlite3.Error:
                    raise  # the engine failed: the whole group fails
                except Exception as exc:  # this write alone fails (conflict, limit, ...)
                    db.execute("ROLLBACK TO w")
                    out.append((False, exc))
                db.execute("RELEASE w")
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return [(False, err)] * len(items)
        return out

    @staticmethod
    def _next_revision(db: sqlite3.Connection) -> int:
        seq = db.execute(REVISION).fetchone()[0]
        return 1 if seq is None else (seq >> 16) + 1

    def _log(self, db: sqlite3.Connection, rev: int, events: list[tuple]) -> None:
        seq = rev << 16
        if len(events) == 1:
            db.execute(LOG, (seq, *events[0]))
        else:
            db.executemany(LOG, [(seq + i, *ev) for i, ev in enumerate(events)])
        floor = trim_floor(rev, self.limits.history)
        if floor:
            db.execute(TRIM, (floor << 16,))

    # -- reads ------------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        check_key(key)
        try:
            row = self._db.execute(GET, (key,)).fetchone()
        except sqlite3.Error as err:
            rows = await self._retry(lambda: self._db.execute(GET, (key,)).fetchall(), err)
            row = rows[0] if rows else None
        return None if row is None else Entry(key, *row)

    async def version(self, key: str) -> int:
        check_key(key)
        rows = await self._read(VERSION, (key,))
        return rows[0][0] if rows else 0

    def _range_sql(
        self, what: str, prefix: str, start_after: str | None, limit: int | None
    ) -> tuple[str, tuple]:
        check_list_args(prefix, start_after, limit)
        sql = f"SELECT {what} FROM kv WHERE key >= ?"
        params: list[Any] = [prefix]
        end = prefix_end(prefix)
        if end is not None:
            sql += " AND key < ?"
            params.append(end)
        if start_after is not None:
            sql += " AND key > ?"
            params.append(start_after)
        sql += " ORDER BY key LIMIT ?"
        params.append(-1 if limit is None else limit)
        return sql, tuple(params)

    async def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        sql, params = self._range_sql("key", prefix, start_after, limit)
        return [r[0] for r in await self._read(sql, params)]

    async def entries(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[Entry]:
        sql, params = self._range_sql(
            "key, value, version, created_at, updated_at, revision", prefix, start_after, limit
        )
        return [Entry(*r) for r in await self._read(sql, params)]

    async def revision(self) -> int:
        seq = (await self._read(REVISION, ()))[0][0]
        return 0 if seq is None else seq >> 16

    # -- writes -----------------------------------------------------------------------------
    async def set(self, key: str, value: bytes) -> int:
        check_key(key)
        value = self.limits.check_value(value)
        return await self._write(self._set, key, value)

    def _set(self, db: sqlite3.Connection, key: str, value: bytes) -> int:
        rev = self._next_revision(db)
        now = time.time()
        version = db.execute(UPSERT, (key, value, now, now, rev)).fetchone()[0]
        db.execute(LOG, (rev << 16, key, 1 if version == 1 else 2, version, value))
        floor = trim_floor(rev, self.limits.history)
        if floor:
            db.execute(TRIM, (floor << 16,))
        return version

    async def delete(self, key: str) -> bool:
        check_key(key)
        return await self._write(self._delete_body(key))

    def _delete_body(self, key: str) -> Callable[[sqlite3.Connection], bool]:
        def body(db: sqlite3.Connection) -> bool:
            if db.execute(DELETE, (key,)).fetchone() is None:
                return False  # nothing was there: nothing written
            rev = self._next_revision(db)
            self._log(db, rev, [(key, 3, 0, None)])
            return True

        return body

    async def compare_and_set(self, key: str, expected_version: int, value: bytes) -> int:
        check_key(key)
        check_expected(expected_version)
        value = self.limits.check_value(value)
        return await self._write(self._cas_body(key, expected_version, value))

    def _cas_body(self, key: str, expected: int, value: bytes) -> Callable[[sqlite3.Connection], int]:
        def body(db: sqlite3.Connection) -> int:
            row = db.execute(VERSION, (key,)).fetchone()
            found = 0 if row is None else row[0]
            if found != expected:
                raise VersionConflict(key, expected, found)
            rev = self._next_revision(db)
            now = time.time()
            if found:
                db.execute(UPDATE, (value, found + 1, now, rev, key))
            else:
                db.execute(INSERT, (key, value, 1, now, now, rev))
            self._log(db, rev, [(key, 2 if found else 1, found + 1, value)])
            return found + 1

        return body

    async def transaction(self, ops: Sequence[TransactionOp]) -> TxnResult:
        checked = validate_ops(ops, self.limits)
        return await self._write(self._txn_body(checked))

    def _txn_body(self, ops: list[TransactionOp]) -> Callable[[sqlite3.Connection], TxnResult]:
        def body(db: sqlite3.Connection) -> TxnResult:
            def version_of(key: str) -> int:
                row = db.execute(VERSION, (key,)).fetchone()
                return 0 if row is None else row[0]

            versions, deleted, writes = plan_transaction(ops, version_of)
            if not writes:  # checks only: nothing written
                return TxnResult(self._next_revision(db) - 1, versions, deleted)
            rev = self._next_revision(db)
            self._log(db, rev, self._apply(db, rev, writes))
            return TxnResult(rev, versions, deleted)

        return body

    @staticmethod
    def _apply(db: sqlite3.Connection, rev: int, writes: list[Mutation]) -> list[tuple]:
        now = time.time()
        events = []
        for key, value, version in writes:
            if value is None:
                db.execute(DELETE, (key,)).fetchall()
                events.append((key, 3, 0, None))
            elif version == 1:
                db.execute(INSERT, (key, value, 1, now, now, rev))
                events.append((key, 1, 1, value))
            else:
                db.execute(UPDATE, (value, version, now, rev, key))
                events.append((key, 2, version, value))
        return events

    # -- change log ---------------------------------------------------------------------------
    def _sync_read(self, sql: str, params: tuple = ()) -> list:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise self._fail(err) from err

    def _current_revision(self) -> int:
        seq = self._sync_read(REVISION)[0][0]
        return 0 if seq is None else seq >> 16

    def _oldest_revision(self) -> int:
        oldest = self._sync_read("SELECT min(seq) FROM changes")[0][0]
        return 1 if oldest is None else oldest >> 16  # an empty log: nothing written yet

    def _changes(self, after: int, upto: int) -> list[Event]:
        rows = self._sync_read(CHANGES, ((after + 1) << 16, (upto + 1) << 16))
        types = EVENT_TYPES
        return [Event(types[ev], key, value, version, seq >> 16) for seq, key, ev, version, value in rows]

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        if self._group is not None:
            await asyncio.to_thread(self._group.close)
            if self._wdb is not None:
                self._wdb.close()  # the writer thread has stopped: nothing else uses it
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)
        self._db.close()
