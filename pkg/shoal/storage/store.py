"""ChunkStore: chunks appended to superblock files, indexed in memory, durable before acknowledged.

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

# Fields of an index entry (a plain tuple: cheap to build in the native index load).
E_SB, E_REC_OFF, E_DATA_OFF, E_LEN, E_SEQ, E_SHA256, E_CHECKSUM, E_ALGO = range(8)


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
        self.live: dict[str, tuple] = {}
        self.tombs: dict[str, tuple] = {}
        self.put_times: dict[str, float] = {}  # stored time of chunks written since open (PUT, move)
        self._sb_mtimes: dict[int, float] = {}  # superblock mtimes at open: recovered records' times
        self.files: dict[int, SuperblockFile] = {}
        self.recovery: RecoveryReport = self._open()
        self._writer = threading.Thread(target=self._write_loop, name="shoal-sb-writer", daemon=True)
        self._closed = False
        self._writer.start()

    # ------------------------------------------------------------------ open / close

    def _open(self) -> RecoveryReport:
        state, files, report, valid_len = recover(self.sb_dir, self.index.read(), self.durable)
        self.live, self.tombs, self.files = state.live, state.tombs, files
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
        if report.changed:
            self._snapshot_index()
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

    def stat(self, chunk_id: str) -> tuple | None:
        """The index entry of a live chunk (no disk access), or None."""
        return self.live.get(chunk_id)

    def read(self, chunk_id: str) -> tuple[bytes, tuple]:
        """(data, entry) after verifying the record's checksum; one os.pread.

        Raises ChunkNotFound, or ChunkCorrupt when the bytes on disk fail their checksum.
        """
        for _ in range(4):
            entry = self.live.get(chunk_id)
            if entry is None:
                raise ChunkNotFound(chunk_id)
            f = self.files.get(entry[E_SB])
            if f is None:  # compaction moved it between the two lookups
                continue
            try:
                data = os.pread(f.fd, entry[E_LEN], entry[E_DATA_OFF])
            except OSError as exc:
                if self.live.get(chunk_id) is not entry:
                    continue
                raise self._corrupt(chunk_id, f"read error: {exc}") from exc
            if len(data) == entry[E_LEN] and checksum.verify(entry[E_ALGO], data, entry[E_CHECKSUM]):
                return data, entry
            if self.live.get(chunk_id) is not entry:
                continue
            raise self._corrupt(
                chunk_id,
                "short read" if len(data) != entry[E_LEN] else "checksum mismatch",
            )
        raise StoreError(f"chunk {chunk_id} kept moving while being read")

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
        now = time.time()
        for s in staged:
            if s.apply is not None:
                self._apply(s.apply)
            op = s.op
            if op.kind == "put":  # a repeated PUT of the same bytes too: the copy is wanted again
                self.put_times[op.chunk_id] = now
            elif op.kind == "del":
                self.put_times.pop(op.chunk_id, None)
            elif op.kind == "move" and s.result and not op.tomb and op.chunk_id not in self.put_times:
                assert op.expect is not None  # compaction keeps a recovered record's time
                self.put_times[op.chunk_id] = self._sb_mtimes.get(op.expect[E_SB], now)
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
        entry = self.live.get(chunk_id)
        if entry is not None:
            return ("live", entry)
        tomb = self.tombs.get(chunk_id)
        return ("tomb", tomb) if tomb is not None else None

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
                return _Staged(op, PutResult(False, entry))
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
        return _Staged(op, PutResult(True, entry), index, ("live", op.chunk_id, entry))

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
        return _Staged(op, True, index, ("live", op.chunk_id, entry))

    def _stage_retire(self, op: _Op) -> _Staged:
        sb_id = op.sb_id
        if sb_id == self.active.id or sb_id not in self.files:
            raise StoreError(f"superblock {sb_id} cannot be retired")
        if any(v[0] == sb_id for v in list(self.live.values())):
            raise StoreError(f"superblock {sb_id} still holds live chunks")
        index = sb.pack_index_entry(sb.KIND_RETIRE, b"", sb_id, 0)
        return _Staged(op, True, index, ("retire", sb_id))

    def _apply(self, change: tuple) -> None:
        kind = change[0]
        if kind == "live":
            _, chunk_id, entry = change
            self.live[chunk_id] = entry
            self.tombs.pop(chunk_id, None)
        elif kind == "tomb":
            _, chunk_id, tomb = change
            self.tombs[chunk_id] = tomb
            self.live.pop(chunk_id, None)
            self.corrupt.discard(chunk_id)
        elif kind == "retire":
            for key in [k for k, t in self.tombs.items() if t[0] == change[1]]:
                del self.tombs[key]  # tombstones compaction found no longer needed
            f = self.files.pop(change[1])
            os.unlink(f.path)
            if self.durable:
                fsync_dir(self.sb_dir)
            self._closer.add(f.fd)
        if kind == "live" and change[1] in self.corrupt and self.intact(change[2]):
            self.corrupt.discard(change[1])

    # ------------------------------------------------------------------ index snapshots

    def _index_entries(self) -> list[bytes]:
        empty = checksum.compute(sb.ALGO_CRC32C, b"")
        out = [
            sb.pack_index_entry(sb.KIND_PUT, k.encode(), e[0], e[1], e[3], e[4], e[5], e[6], e[7])
            for k, e in self.live.items()
        ]
        out += [
            sb.pack_index_entry(sb.KIND_DEL, k.encode(), t[0], t[1], 0, t[2], _ZERO32, empty, sb.ALGO_CRC32C)
            for k, t in self.tombs.items()
        ]
        out += [sb.pack_index_entry(sb.KIND_MARK, b"", f.id, f.end) for f in self.files.values()]
        return out

    def _snapshot_index(self) -> None:
        self.index.rewrite(self._index_entries())

    def _maybe_snapshot(self) -> None:
        estimate = (len(self.live) + len(self.tombs)) * 168 + 4096
        if self.index.size > 4 * estimate + (16 << 20):
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
            t = self.put_times.get(cid)
            if t is None:
                entry = self.live.get(cid)
                if entry is None:
                    continue
                t = self._sb_mtimes.get(entry[E_SB], now)
            out[cid] = t
        return out

    # ------------------------------------------------------------------ figures

    @property
    def chunk_count(self) -> int:
        return len(self.live)

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
        used = {f.id: 0 for f in self.files.values() if f.id != self.active.id}
        for k, e in list(self.live.items()):
            if e[0] in used:
                used[e[0]] += sb.record_size(len(k), e[E_LEN])
        for k, t in list(self.tombs.items()):
            if t[0] in used:
                used[t[0]] += sb.record_size(len(k), 0)
        return {i: (u, self.files[i].end) for i, u in used.items() if i in self.files}
