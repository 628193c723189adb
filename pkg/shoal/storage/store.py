"""ChunkStore: chunks appended to superblock files, indexed in memory, durable before acknowledged.

The in-memory index is sb.ChunkIndex: 32 bytes a slot in one buffer, keyed by a 64-bit hash
of the chunk id, holding only the location, lengths, seq, live/tombstone and stored time. The
chunk id, SHA-256 and checksum stay on disk in the record header, which a read takes first
(and so confirms the id: two ids with one hash are told apart there).

One writer thread owns every write. It takes all waiting operations as one batch, appends
their records, fsyncs the touched superblocks, appends the batch's index entries to the
index log and fsyncs it, and only then makes the batch visible and acknowledges it (group
commit: concurrent PUTs share their fsyncs). Reads never take a lock: an index lookup and
one os.pread, then the record's checksum is verified; corrupt data is never returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.storage import checksum
from shoal.storage.files import DeferredCloser, IndexLog, SuperblockFile, fsync_dir, sb
from shoal.storage.recovery import RecoveryReport, recover

log = logging.getLogger("shoal.storage")

CHUNK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_CHUNK = 2 * 1024 * 1024
DEFAULT_SUPERBLOCK_SIZE = 1 << 30
_ZERO32 = bytes(32)

# Fields of an index entry (a plain tuple, built from the table and the record header).
E_SB, E_REC_OFF, E_DATA_OFF, E_LEN, E_SEQ, E_SHA256, E_CHECKSUM, E_ALGO = range(8)
# Fields of a table entry (sb.ChunkIndex.get)
L_SB, L_OFF, L_IDLEN, L_LEN, L_SEQ, L_FLAGS, L_TIME = range(7)
MAX_SUPERBLOCK_SIZE = 32 << 30  # record offsets are kept as offset / 8 in 32 bits


def time_units(t: float) -> int:
    """A unix time as the table keeps it: 1/1024 s since sb.TIME_EPOCH, rounded up (never earlier)."""
    return max(1, -int(-(t - sb.TIME_EPOCH) * sb.TIME_UNITS // 1))


def unix_time(units: int) -> float:
    return sb.TIME_EPOCH + units / sb.TIME_UNITS


class _TableView(Mapping):
    """store.live / store.tombs as they were (id -> entry), over the compact table.

    A lookup reads the record header (ids and hashes are not in memory); iteration reads
    every header of the kind, superblock by superblock in offset order: fine for tests and
    listings, one pread a chunk.
    """

    def __init__(self, store: ChunkStore, flags: int) -> None:
        self._store = store
        self._flags = flags

    def __len__(self) -> int:
        t = self._store.table
        return t.live_count if self._flags == sb.FLAG_LIVE else len(t) - t.live_count

    def __getitem__(self, chunk_id: str) -> tuple:
        got = self._store._lookup(chunk_id, self._flags)
        if got is None:
            raise KeyError(chunk_id)
        return got[1]

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, str) and self._store._lookup(chunk_id, self._flags) is not None

    def __iter__(self) -> Iterator[str]:
        for cid, _ in self._store.records(self._flags):
            yield cid

    def items(self):  # type: ignore[override]
        return list(self._store.records(self._flags))

    def values(self):  # type: ignore[override]
        return [e for _, e in self._store.records(self._flags)]


class StoreError(Exception):
    """A chunk operation that could not be done; the service maps each kind to a status."""


class ChunkNotFound(StoreError):
    pass


class ChunkConflict(StoreError):
    """Different bytes were sent for a chunk id that is already stored."""


class ChunkCorrupt(StoreError):
    """The stored bytes fail their checksum (or cannot be read): they are not served."""

    def __init__(self, chunk_id: str, reason: str) -> None:
        super().__init__(f"chunk {chunk_id} is corrupt on this node: {reason}")
        self.chunk_id = chunk_id
        self.reason = reason


class StorageFull(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class PutResult:
    created: bool
    entry: tuple


@dataclass(slots=True)
class _Op:
    kind: str  # put | del | move | retire | sync
    future: Future
    chunk_id: str = ""
    data: bytes = b""
    sha256: bytes = b""
    checksum: bytes = b""
    algo: int = 0
    expect: tuple | None = None  # move: the location it must still be at
    tomb: bool = False
    sb_id: int = 0


@dataclass(slots=True)
class _Staged:
    op: _Op
    result: Any
    index: bytes = b""
    apply: tuple | None = None


def chunk_id_ok(chunk_id: str) -> bool:
    return CHUNK_ID.match(chunk_id) is not None


class ChunkStore:
    """A directory of superblocks plus their index. Thread-safe; one instance per directory."""

    def __init__(
        self,
        root: str | Path,
        *,
        superblock_size: int = DEFAULT_SUPERBLOCK_SIZE,
        checksum_algo: str = "crc32c",
        durable: bool = True,
        capacity_bytes: int | None = None,
        hash_threads: int = 2,
    ) -> None:
        if superblock_size > MAX_SUPERBLOCK_SIZE:
            raise ValueError(f"superblock_size is at most {MAX_SUPERBLOCK_SIZE} bytes")
        self.root = Path(root)
        self.sb_dir = self.root / "superblocks"
        self.sb_dir.mkdir(parents=True, exist_ok=True)
        self.superblock_size = superblock_size
        self.algo = checksum.ALGORITHMS[checksum_algo]
        self.durable = durable
        self.capacity_bytes = capacity_bytes
        self.corrupt: set[str] = set()
        self.index = IndexLog(self.root / "index.log", durable)
        self._closer = DeferredCloser()
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._hasher = ThreadPoolExecutor(hash_threads, thread_name_prefix="shoal-hash")
        self._usage_cache = (0.0, 0.0)
        self.commits = 0  # group commits that wrote something (one fsync round each)
        self.table = sb.ChunkIndex()
        self.live = _TableView(self, sb.FLAG_LIVE)  # id -> entry, read through the table
        self.tombs = _TableView(self, sb.FLAG_TOMBSTONE)  # id -> (sb, rec_off, seq)
        self._snapshot_size = 0  # bytes of the index file that are the table snapshot
        self._sb_mtimes: dict[int, float] = {}  # superblock mtimes at open: recovered records' times
        self.files: dict[int, SuperblockFile] = {}
        self.recovery: RecoveryReport = self._open()
        self._writer = threading.Thread(target=self._write_loop, name="shoal-sb-writer", daemon=True)
        self._closed = False
        self._writer.start()

    # ------------------------------------------------------------------ open / close

    def _open(self) -> RecoveryReport:
        state, files, report, valid_len = recover(self.sb_dir, self.index, self.durable)
        self.table, self.files = state.table, files
        self._snapshot_size = report.snapshot_bytes
        self.seq = state.max_seq
        self.corrupt.update(report.corrupt)
        self.index.open(valid_len)
        for f in files.values():
            try:
                self._sb_mtimes[f.id] = os.stat(f.path).st_mtime
            except OSError:
                pass
        if not files:
            f = SuperblockFile.create(self.sb_dir, 1, self.durable)
            self.files[f.id] = f
        self.active = self.files[max(self.files)]
        if report.changed or (not report.snapshot_bytes and len(self.table)):
            self._snapshot_index()  # a v1 log is migrated to a snapshot at once
        if report.changed:
            log.info("storage recovery: %s", report)
        return report

    def close(self) -> None:
        """Finish queued writes, then release every file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        self._hasher.shutdown(wait=True)
        self._closer.run(force=True)
        for f in self.files.values():
            os.close(f.fd)
        self.files = {}
        self.index.close()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads

    # ------------------------------------------------------------------ the table

    @staticmethod
    def key(chunk_id: str) -> int:
        return sb.chunk_key(chunk_id.encode("latin-1"))

    def _header(self, sb_id: int, rec_off: int, id_len: int) -> tuple | None:
        """The parsed record header at a table location, or None when it cannot be read."""
        f = self.files.get(sb_id)
        if f is None:
            return None
        try:
            return sb.parse_header(os.pread(f.fd, sb.HEADER_SIZE + id_len, rec_off))
        except (OSError, ValueError):
            return None

    def _lookup(self, chunk_id: str, flags: int = 3) -> tuple[tuple, tuple] | None:
        """(table entry, index entry) of `chunk_id`, its id confirmed by the record header.

        An index entry of a live chunk is (sb, rec_off, data_off, len, seq, sha256, checksum,
        algo); of a tombstone (sb, rec_off, seq). A header that cannot be read (damage) is
        taken as this chunk's when no other entry under the key names it: the read then fails
        its checksum and the chunk is reported corrupt, never served.
        """
        n = len(chunk_id)
        unreadable = None
        for loc in self.table.get(self.key(chunk_id)):
            if loc[L_IDLEN] != n or not loc[L_FLAGS] & flags:
                continue
            hdr = self._header(loc[L_SB], loc[L_OFF], n)
            if hdr is None:
                unreadable = unreadable or loc
                continue
            if hdr[6] == chunk_id:
                return loc, self._entry(loc, hdr)
        if unreadable is not None:
            return unreadable, self._entry(unreadable, None)
        return None

    @staticmethod
    def _entry(loc: tuple, hdr: tuple | None) -> tuple:
        sb_id, off, id_len, length, seq, flags, _ = loc
        if flags == sb.FLAG_TOMBSTONE:
            return (sb_id, off, seq)
        if hdr is None:
            return (sb_id, off, off + sb.HEADER_SIZE + id_len, length, seq, _ZERO32, _ZERO32, 0)
        return (sb_id, off, off + sb.HEADER_SIZE + id_len, length, seq, hdr[4], hdr[5], hdr[1])

    def records(self, flags: int = sb.FLAG_LIVE, sb_id: int = -1) -> Iterator[tuple[str, tuple]]:
        """(chunk id, index entry) of every entry of a kind, superblock by superblock, in offset
        order; one header read each (ids are not kept in memory)."""
        sbs = [sb_id] if sb_id >= 0 else sorted(self.table.usage())
        for i in sbs:
            for loc in sorted(self.table.select(i, flags), key=lambda e: e[2]):
                loc = loc[1:]
                hdr = self._header(loc[L_SB], loc[L_OFF], loc[L_IDLEN])
                if hdr is None:
                    log.error("superblock %d: record header at %d unreadable", loc[L_SB], loc[L_OFF])
                    continue
                yield hdr[6], self._entry(loc, hdr)

    def stat(self, chunk_id: str) -> tuple | None:
        """The index entry of a live chunk (one small read: its record header), or None."""
        got = self._lookup(chunk_id, sb.FLAG_LIVE)
        if got is None:
            return None
        if got[1][E_ALGO] == 0:  # header unreadable
            self._corrupt(chunk_id, "record header unreadable")
        return got[1]

    def read(self, chunk_id: str) -> tuple[bytes, tuple]:
        """(data, entry) after verifying the record's checksum; one os.pread.

        Raises ChunkNotFound, or ChunkCorrupt when the bytes on disk fail their checksum.
        """
        for _ in range(4):
            got = self._lookup(chunk_id, sb.FLAG_LIVE)
            if got is None:
                raise ChunkNotFound(chunk_id)
            loc, entry = got
            f = self.files.get(entry[E_SB])
            if f is None:  # compaction moved it between the two lookups
                continue
            if entry[E_ALGO] == 0:
                if not self._moved(chunk_id, loc):
                    raise self._corrupt(chunk_id, "record header unreadable")
                continue
            try:
                data = os.pread(f.fd, entry[E_LEN], entry[E_DATA_OFF])
            except OSError as exc:
                if self._moved(chunk_id, loc):
                    continue
                raise self._corrupt(chunk_id, f"read error: {exc}") from exc
            if len(data) == entry[E_LEN] and checksum.verify(entry[E_ALGO], data, entry[E_CHECKSUM]):
                return data, entry
            if self._moved(chunk_id, loc):
                continue
            raise self._corrupt(
                chunk_id,
                "short read" if len(data) != entry[E_LEN] else "checksum mismatch",
            )
        raise StoreError(f"chunk {chunk_id} kept moving while being read")

    def _moved(self, chunk_id: str, loc: tuple) -> bool:
        """Whether the chunk's table entry is no longer `loc` (compaction or a write moved it)."""
        return loc not in self.table.get(self.key(chunk_id))

    def _corrupt(self, chunk_id: str, reason: str) -> ChunkCorrupt:
        if chunk_id not in self.corrupt:
            log.error("corrupt chunk %s: %s", chunk_id, reason)
        self.corrupt.add(chunk_id)
        return ChunkCorrupt(chunk_id, reason)

    def intact(self, entry: tuple) -> bool:
        f = self.files.get(entry[E_SB])
        if f is None:
            return False
        data = os.pread(f.fd, entry[E_LEN], entry[E_DATA_OFF])
        return len(data) == entry[E_LEN] and checksum.verify(entry[E_ALGO], data, entry[E_CHECKSUM])

    # ------------------------------------------------------------------ writes

    def digest(self, data: bytes) -> tuple[bytes, bytes]:
        """(sha256, record checksum) of `data`; both hashes release the GIL."""
        return hashlib.sha256(data).digest(), checksum.compute(self.algo, data)

    def submit_put(
        self, chunk_id: str, data: bytes, sha256: bytes | None = None, record_checksum: bytes | None = None
    ) -> Future:
        """Queue a PUT; the future resolves to a PutResult once the record is durable."""
        if not chunk_id_ok(chunk_id):
            raise ValueError("chunk id must match [A-Za-z0-9_-]{1,128}")
        if not data:
            raise ValueError("a chunk cannot be empty")
        if sha256 is None or record_checksum is None:
            sha256, record_checksum = self.digest(data)
        return self._submit(
            _Op("put", Future(), chunk_id, data, sha256, record_checksum, self.algo),
        )

    def put(self, chunk_id: str, data: bytes) -> PutResult:
        return self.submit_put(chunk_id, data).result()

    async def put_async(self, chunk_id: str, data: bytes, sha256: bytes | None = None) -> PutResult:
        """Hash on the thread pool, then wait for the group commit without blocking the loop."""
        if sha256 is None:
            sha256, cks = await asyncio.get_running_loop().run_in_executor(self._hasher, self.digest, data)
        else:
            cks = await asyncio.get_running_loop().run_in_executor(
                self._hasher, checksum.compute, self.algo, data
            )
        return await asyncio.wrap_future(self.submit_put(chunk_id, data, sha256, cks))

    async def digest_async(self, data: bytes) -> tuple[bytes, bytes]:
        return await asyncio.get_running_loop().run_in_executor(self._hasher, self.digest, data)

    def submit_delete(self, chunk_id: str) -> Future:
        return self._submit(_Op("del", Future(), chunk_id))

    def delete(self, chunk_id: str) -> None:
        """Write a tombstone; ChunkNotFound when there is no such chunk."""
        self.submit_delete(chunk_id).result()

    def submit_move(self, chunk_id: str, raw: bytes, expect: tuple, tomb: bool) -> Future:
        """Compaction: copy a record (bytes as on disk) to the active superblock if still current."""
        return self._submit(_Op("move", Future(), chunk_id, raw, expect=expect, tomb=tomb))

    def submit_retire(self, sb_id: int) -> Future:
        return self._submit(_Op("retire", Future(), sb_id=sb_id))

    def sync(self) -> None:
        """Wait until everything queued so far is durable."""
        self._submit(_Op("sync", Future())).result()

    def _submit(self, op: _Op) -> Future:
        if self._closed:
            raise StoreError("store is closed")
        self._queue.put(op)
        return op.future

    # ------------------------------------------------------------------ the writer

    def _write_loop(self) -> None:
        while True:
            try:
                op = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._closer.run()
                continue
            batch = [op]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            ops = [o for o in batch if o is not None]
            if ops:
                try:
                    self._commit(ops)
                except BaseException as exc:  # never leave a caller waiting
                    log.exception("write batch failed")
                    for o in ops:
                        if not o.future.done():
                            o.future.set_exception(StoreError(f"write failed: {exc}"))
            if stop:
                return

    def _commit(self, ops: list[_Op]) -> None:
        pending: dict[str, tuple[str, tuple]] = {}
        touched: dict[int, SuperblockFile] = {}
        start_ends = {f.id: f.end for f in self.files.values()}
        staged: list[_Staged] = []
        for op in ops:
            try:
                staged.append(self._stage(op, pending, touched))
            except StoreError as exc:
                op.future.set_exception(exc)
            except OSError as exc:
                op.future.set_exception(self._os_error(exc))
        try:
            if self.durable:
                for f in touched.values():
                    os.fdatasync(f.fd)
            self.index.append(b"".join(s.index for s in staged))
        except OSError as exc:
            self._rollback(touched, start_ends)
            err = self._os_error(exc)
            for s in staged:
                s.op.future.set_exception(err)
            return
        if touched:
            self.commits += 1
        now = time_units(time.time())
        for s in staged:
            if s.apply is not None:
                self._apply(s.apply, now)
        for s in staged:
            s.op.future.set_result(s.result)
        self._closer.run()
        self._maybe_snapshot()

    def _os_error(self, exc: OSError) -> StoreError:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull(f"no space left: {exc}")
        return StoreError(f"storage error: {exc}")

    def _rollback(self, touched: dict[int, SuperblockFile], start_ends: dict[int, int]) -> None:
        for f in touched.values():
            end = start_ends.get(f.id, sb.FILE_HEADER_SIZE)
            try:
                os.ftruncate(f.fd, end)
                f.end = end
            except OSError:
                log.exception("could not roll back superblock %d", f.id)

    def _stage(self, op: _Op, pending: dict, touched: dict) -> _Staged:
        if op.kind == "put":
            return self._stage_put(op, pending, touched)
        if op.kind == "del":
            return self._stage_delete(op, pending, touched)
        if op.kind == "move":
            return self._stage_move(op, pending, touched)
        if op.kind == "retire":
            return self._stage_retire(op)
        return _Staged(op, None)

    def _current(self, chunk_id: str, pending: dict) -> tuple[str, tuple] | None:
        if chunk_id in pending:
            return pending[chunk_id]
        got = self._lookup(chunk_id)
        if got is None:
            return None
        return ("live" if got[0][L_FLAGS] == sb.FLAG_LIVE else "tomb", got[1])

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _append(self, parts: list[bytes], size: int, touched: dict) -> tuple[SuperblockFile, int]:
        f = self.active
        if f.end + size > self.superblock_size and f.end > sb.FILE_HEADER_SIZE:
            f = self._rotate(touched)
        off = f.end
        written = os.pwritev(f.fd, parts, off)
        if written != size:
            os.ftruncate(f.fd, off)
            raise StoreError(f"short write to superblock {f.id}: {written} of {size} bytes")
        f.end = off + size
        touched[f.id] = f
        return f, off

    def _rotate(self, touched: dict) -> SuperblockFile:
        """Seal the active superblock and start the next one."""
        old = self.active
        if self.durable and old.id in touched:
            os.fdatasync(old.fd)
        new = SuperblockFile.create(self.sb_dir, old.id + 1, self.durable)
        self.files[new.id] = new
        self.active = new
        log.info("superblock %d sealed at %d bytes; writing to %d", old.id, old.end, new.id)
        return new

    def _stage_put(self, op: _Op, pending: dict, touched: dict) -> _Staged:
        cur = self._current(op.chunk_id, pending)
        if cur is not None and cur[0] == "live":
            entry = cur[1]
            if entry[E_SHA256] != op.sha256 or entry[E_LEN] != len(op.data):
                raise ChunkConflict(f"chunk {op.chunk_id} already holds different bytes")
            if op.chunk_id not in self.corrupt or self.intact(entry):
                # the copy is wanted again: its stored time is refreshed, and logged (equal seq,
                # same place) so a replay after a crash does not bring back the older time
                index = sb.pack_index_entry(
                    sb.KIND_PUT,
                    op.chunk_id.encode(),
                    entry[E_SB],
                    entry[E_REC_OFF],
                    entry[E_LEN],
                    entry[E_SEQ],
                    entry[E_SHA256],
                    entry[E_CHECKSUM],
                    entry[E_ALGO],
                )
                return _Staged(op, PutResult(False, entry), index, ("touch", op.chunk_id, entry))
            log.warning("rewriting corrupt chunk %s from a fresh PUT", op.chunk_id)
        cid = op.chunk_id.encode()
        seq = self._next_seq()
        prefix, suffix = sb.pack_record(cid, sb.FLAG_LIVE, op.algo, seq, op.sha256, op.checksum, len(op.data))
        size = len(prefix) + len(op.data) + len(suffix)
        f, off = self._append([prefix, op.data, suffix], size, touched)
        entry = (f.id, off, off + len(prefix), len(op.data), seq, op.sha256, op.checksum, op.algo)
        pending[op.chunk_id] = ("live", entry)
        index = sb.pack_index_entry(
            sb.KIND_PUT, cid, f.id, off, len(op.data), seq, op.sha256, op.checksum, op.algo
        )
        return _Staged(op, PutResult(True, entry), index, ("live", op.chunk_id, entry, None))

    def _stage_delete(self, op: _Op, pending: dict, touched: dict) -> _Staged:
        cur = self._current(op.chunk_id, pending)
        if cur is None or cur[0] != "live":
            raise ChunkNotFound(op.chunk_id)
        cid = op.chunk_id.encode()
        seq = self._next_seq()
        empty = checksum.compute(sb.ALGO_CRC32C, b"")
        prefix, suffix = sb.pack_record(cid, sb.FLAG_TOMBSTONE, sb.ALGO_CRC32C, seq, _ZERO32, empty, 0)
        f, off = self._append([prefix, suffix], len(prefix) + len(suffix), touched)
        tomb = (f.id, off, seq)
        pending[op.chunk_id] = ("tomb", tomb)
        index = sb.pack_index_entry(sb.KIND_DEL, cid, f.id, off, 0, seq, _ZERO32, empty, sb.ALGO_CRC32C)
        return _Staged(op, None, index, ("tomb", op.chunk_id, tomb))

    def _stage_move(self, op: _Op, pending: dict, touched: dict) -> _Staged:
        cur = self._current(op.chunk_id, pending)
        if cur is None or cur[1] != op.expect or (cur[0] == "tomb") != op.tomb:
            return _Staged(op, False)  # deleted, re-put or already moved: nothing to keep
        f, off = self._append([op.data], len(op.data), touched)
        cid = op.chunk_id.encode()
        if op.tomb:
            tomb = (f.id, off, op.expect[2])
            pending[op.chunk_id] = ("tomb", tomb)
            empty = checksum.compute(sb.ALGO_CRC32C, b"")
            index = sb.pack_index_entry(
                sb.KIND_DEL, cid, f.id, off, 0, tomb[2], _ZERO32, empty, sb.ALGO_CRC32C
            )
            return _Staged(op, True, index, ("tomb", op.chunk_id, tomb))
        e = op.expect
        entry = (
            f.id,
            off,
            off + sb.HEADER_SIZE + len(cid),
            e[E_LEN],
            e[E_SEQ],
            e[E_SHA256],
            e[E_CHECKSUM],
            e[E_ALGO],
        )
        pending[op.chunk_id] = ("live", entry)
        index = sb.pack_index_entry(
            sb.KIND_PUT, cid, f.id, off, e[E_LEN], e[E_SEQ], e[E_SHA256], e[E_CHECKSUM], e[E_ALGO]
        )
        return _Staged(op, True, index, ("live", op.chunk_id, entry, e[E_SB]))

    def _stage_retire(self, op: _Op) -> _Staged:
        sb_id = op.sb_id
        if sb_id == self.active.id or sb_id not in self.files:
            raise StoreError(f"superblock {sb_id} cannot be retired")
        if self.table.usage().get(sb_id, [0])[0]:
            raise StoreError(f"superblock {sb_id} still holds live chunks")
        index = sb.pack_index_entry(sb.KIND_RETIRE, b"", sb_id, 0)
        return _Staged(op, True, index, ("retire", sb_id))

    def _set(
        self, chunk_id: str, sb_id: int, rec_off: int, length: int, seq: int, flags: int, t: int
    ) -> None:
        """Make the table say `chunk_id` is at (sb_id, rec_off): replace its entry or add one."""
        key = self.key(chunk_id)
        got = self._lookup(chunk_id)
        n = len(chunk_id)
        if got is not None:
            old = got[0]
            self.table.replace(key, old[L_SB], old[L_OFF], sb_id, rec_off, n, length, seq, flags, t)
        else:
            self.table.insert(key, sb_id, rec_off, n, length, seq, flags, t)

    def _apply(self, change: tuple, now: int) -> None:
        kind = change[0]
        if kind == "touch":
            _, chunk_id, e = change
            self._set(chunk_id, e[E_SB], e[E_REC_OFF], e[E_LEN], e[E_SEQ], sb.FLAG_LIVE, now)
        elif kind == "live":
            _, chunk_id, e, moved_from = change
            t = now
            if moved_from is not None:  # compaction keeps the stored time (a recovered one's: its file's)
                got = self._lookup(chunk_id, sb.FLAG_LIVE)
                t = got[0][L_TIME] if got is not None else 0
                if not t:
                    t = time_units(self._sb_mtimes.get(moved_from, time.time()))
            self._set(chunk_id, e[E_SB], e[E_REC_OFF], e[E_LEN], e[E_SEQ], sb.FLAG_LIVE, t)
        elif kind == "tomb":
            _, chunk_id, tomb = change
            self._set(chunk_id, tomb[0], tomb[1], 0, tomb[2], sb.FLAG_TOMBSTONE, now)
            self.corrupt.discard(chunk_id)
        elif kind == "retire":
            self.table.drop_superblock(change[1])  # tombstones compaction found no longer needed
            f = self.files.pop(change[1])
            os.unlink(f.path)
            if self.durable:
                fsync_dir(self.sb_dir)
            self._closer.add(f.fd)
        if kind in ("live", "touch") and change[1] in self.corrupt and self.intact(change[2]):
            self.corrupt.discard(change[1])

    # ------------------------------------------------------------------ index snapshots

    def _snapshot_index(self) -> None:
        """Replace the index file with the table itself (slots as in memory) and the watermarks."""
        water = {f.id: f.end for f in self.files.values()}
        parts = sb.pack_snapshot(self.table, water, self.seq)
        self.index.rewrite_parts(parts)
        self._snapshot_size = self.index.size

    def _maybe_snapshot(self) -> None:
        """Snapshot once the log past the snapshot is a quarter of it (or 16 MiB): that bounds
        the replay at open, at the price of one table write per so many operations."""
        if self.index.size - self._snapshot_size > max(16 << 20, self._snapshot_size // 4):
            self._snapshot_index()

    def stored_times(self, chunk_ids: list[str]) -> dict[str, float]:
        """When each live chunk was stored (unix s), never earlier than the truth.

        A PUT since this store was opened gives its own time; a record recovered at open, the
        modification time its superblock file had then (the record was written no later). A
        restart can only make a copy look younger, which delays, never hastens, its collection.
        """
        out: dict[str, float] = {}
        now = time.time()
        for cid in chunk_ids:
            got = self._lookup(cid, sb.FLAG_LIVE)
            if got is None:
                continue
            loc = got[0]
            out[cid] = unix_time(loc[L_TIME]) if loc[L_TIME] else self._sb_mtimes.get(loc[L_SB], now)
        return out

    # ------------------------------------------------------------------ figures

    @property
    def chunk_count(self) -> int:
        return self.table.live_count

    def stored_bytes(self) -> int:
        return sum(f.end for f in list(self.files.values())) + self.index.size

    def disk_usage_percent(self, max_age: float = 0.5) -> float:
        """Used share of the node's disk (or of --capacity-bytes when set), cached briefly."""
        now = time.monotonic()
        at, value = self._usage_cache
        if now - at < max_age:
            return value
        if self.capacity_bytes:
            value = 100.0 * self.stored_bytes() / self.capacity_bytes
        else:
            usage = shutil.disk_usage(self.root)
            value = 100.0 * usage.used / (usage.used + usage.free) if usage.total else 0.0
        value = round(value, 2)
        self._usage_cache = (now, value)
        return value

    def garbage(self) -> dict[int, tuple[int, int]]:
        """{sealed superblock id: (bytes in use by current records, file size)}."""
        usage = self.table.usage()
        used = {f.id: usage.get(f.id, [0, 0, 0])[2] for f in self.files.values() if f.id != self.active.id}
        return {i: (u, self.files[i].end) for i, u in used.items() if i in self.files}
