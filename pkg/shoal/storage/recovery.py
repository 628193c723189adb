"""Open a data directory after a clean stop or a crash: replay the index log, then scan.

The index log is a prefix of the truth: every entry in it describes data that was fsynced
before the entry was written. Whatever a superblock holds past the furthest indexed record
(its watermark) is scanned: records are framed, footers and data checksums checked, and
a trailing run of torn or failing records (writes that were never acknowledged, since an
acknowledgement waits for fsync) is truncated. A damaged range followed by good records is
skipped, not truncated: acknowledged data after it stays readable. Without an index log,
every superblock is scanned from the start, which rebuilds the same index.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal.storage import checksum
from shoal.storage.files import IndexLog, SuperblockFile, fsync_dir, list_superblocks, sb

log = logging.getLogger("shoal.storage")


@dataclass
class RecoveryReport:
    """What opening the store found and did; logged, and kept for /health and tests."""

    index_rebuilt: bool = False
    index_truncated_at: int | None = None
    scanned_records: int = 0
    truncated: list[tuple[int, int, int]] = field(default_factory=list)  # (sb, from, old end)
    damaged: list[tuple[int, int, int]] = field(default_factory=list)  # (sb, start, end) skipped
    corrupt: list[str] = field(default_factory=list)  # chunk ids whose data failed its checksum
    removed: list[str] = field(default_factory=list)  # retired or unusable superblock files
    snapshot_bytes: int = 0  # how much of the index file was a table snapshot (0: none, a v1 log)
    load_seconds: float = 0.0  # reading the index file into the table (snapshot + its tail)
    scan_seconds: float = 0.0  # scanning superblocks past what the index covers

    @property
    def changed(self) -> bool:
        return bool(
            self.index_rebuilt
            or self.index_truncated_at is not None
            or self.scanned_records
            or self.truncated
            or self.removed
        )


class _Resolver:
    """The chunk id a record header names, read on demand: how a replay tells two ids with the
    same 64-bit key apart (rare: it is only asked when a key is already in the table)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fds: dict[int, int] = {}

    def __call__(self, sb_id: int, rec_off: int, id_len: int) -> str | None:
        fd = self.fds.get(sb_id)
        if fd is None:
            try:
                fd = os.open(self.directory / SuperblockFile.name(sb_id), os.O_RDONLY)
            except OSError:
                return None
            self.fds[sb_id] = fd
        try:
            return sb.parse_header(os.pread(fd, sb.HEADER_SIZE + id_len, rec_off))[6]
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}


def recover(
    directory: Path, index: IndexLog, durable: bool = True
) -> tuple[object, dict[int, SuperblockFile], RecoveryReport, int]:
    """(table state, open superblocks by id, report, valid length of the index log)."""
    report = RecoveryReport()
    resolve = _Resolver(directory)
    try:
        t0 = time.perf_counter()
        state, valid_len, report.snapshot_bytes = index.load_table(resolve)
        report.load_seconds = time.perf_counter() - t0
        size = index.path.stat().st_size if index.path.exists() else 0
        if valid_len < sb.INDEX_HEADER_SIZE:
            report.index_rebuilt = True
            state = sb.TableState(resolve=resolve)
        elif valid_len < size:
            report.index_truncated_at = valid_len
        t0 = time.perf_counter()
        files = _open_files(directory, state, report)
        for f in files.values():
            start = state.water.get(f.id, sb.FILE_HEADER_SIZE)
            if start > f.end:
                _drop_beyond(state, f, report)
            elif start < f.end:
                _scan_tail(f, start, state, report, durable)
        for sb_id in [i for i in state.table.usage() if i not in files]:
            n = state.table.drop_superblock(sb_id)
            log.error("%d chunks point at missing superblock %d; dropped", n, sb_id)
        report.scan_seconds = time.perf_counter() - t0
    finally:
        resolve.close()
        state.resolve = None
    if report.removed and durable:
        fsync_dir(directory)
    return state, files, report, valid_len


def _open_files(directory: Path, state, report: RecoveryReport) -> dict[int, SuperblockFile]:
    files: dict[int, SuperblockFile] = {}
    for sb_id, path in list_superblocks(directory):
        if sb_id in state.retired:
            path.unlink()
            report.removed.append(path.name)
            continue
        try:
            f = SuperblockFile.open(path)
        except ValueError:
            if path.stat().st_size <= sb.FILE_HEADER_SIZE:  # crashed while being created
                path.unlink()
            else:
                path.rename(path.with_suffix(".damaged"))
                log.error("superblock %s has no valid file header; set aside as .damaged", path.name)
            report.removed.append(path.name)
            continue
        if f.id != sb_id:
            os.close(f.fd)
            path.rename(path.with_suffix(".damaged"))
            report.removed.append(path.name)
            continue
        files[sb_id] = f
    return files


def _drop_beyond(state, f: SuperblockFile, report: RecoveryReport) -> None:
    """The file is shorter than its index says (cut outside shoal): forget what is gone."""
    for e in state.table.select(f.id):
        key, sb_id, rec_off, id_len, data_len = e[:5]
        if rec_off + sb.record_size(id_len, data_len) > f.end:
            state.table.remove(key, sb_id, rec_off)
    state.water[f.id] = f.end
    report.truncated.append((f.id, f.end, f.end))
    log.error("superblock %d is shorter than its index; chunks past %d dropped", f.id, f.end)


def _scan_tail(f: SuperblockFile, start: int, state, report: RecoveryReport, durable: bool) -> None:
    records, damaged, _ = sb.scan(f.fd, start, f.end)
    items: list[tuple[int, int, tuple | None, bool]] = []  # (start, end, record, ok)
    for rec in records:
        off, flags, algo, _seq, data_len, _sha, cks, chunk_id = rec
        data = os.pread(f.fd, data_len, off + sb.HEADER_SIZE + len(chunk_id))
        ok = len(data) == data_len and checksum.verify(algo, data, cks)
        items.append((off, off + sb.record_size(len(chunk_id), data_len), rec, ok))
    items += [(a, b, None, False) for a, b in damaged]
    items.sort()
    cut = f.end
    while items and items[-1][1] == cut and not items[-1][3]:
        cut = items.pop()[0]
    for a, b, rec, ok in items:
        if rec is None:
            report.damaged.append((f.id, a, b))
            log.error("superblock %d: damaged bytes %d..%d skipped", f.id, a, b)
            continue
        off, flags, _algo, seq, data_len, _sha, _cks, chunk_id = rec
        kind = sb.KIND_PUT if flags == sb.FLAG_LIVE else sb.KIND_DEL
        sb.apply_table_entry(state, kind, chunk_id, f.id, off, data_len, seq, 0)
        report.scanned_records += 1
        if not ok:
            report.corrupt.append(chunk_id)
    if cut < f.end:
        log.warning("superblock %d: torn tail %d..%d truncated", f.id, cut, f.end)
        report.truncated.append((f.id, cut, f.end))
        os.ftruncate(f.fd, cut)
        if durable:
            with contextlib.suppress(OSError):
                os.fdatasync(f.fd)
        f.end = cut
    sb.apply_table_entry(state, sb.KIND_MARK, "", f.id, cut, 0, 0, 0)
