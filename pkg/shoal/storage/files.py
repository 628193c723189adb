"""Superblock files and the append-only index log on disk.

Each superblock is `superblocks/sb-<id>.dat`: a 64-byte file header, then records. The
index log (`index.log`) is a cache of what the superblocks hold; it can always be rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import time
from pathlib import Path

from shoal._native import load

sb = load("superblock")

_NAME = re.compile(r"^sb-(\d{6,10})\.dat$")


def fsync_dir(path: Path) -> None:
    """Make a create, rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SuperblockFile:
    """One open superblock: its fd (reads use os.pread on it) and its append offset."""

    __slots__ = ("end", "fd", "id", "path")

    def __init__(self, sb_id: int, path: Path, fd: int, end: int) -> None:
        self.id = sb_id
        self.path = path
        self.fd = fd
        self.end = end

    @staticmethod
    def name(sb_id: int) -> str:
        return f"sb-{sb_id:06d}.dat"

    @classmethod
    def create(cls, directory: Path, sb_id: int, durable: bool = True) -> SuperblockFile:
        path = directory / cls.name(sb_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        os.pwrite(fd, sb.pack_file_header(sb_id), 0)
        if durable:
            os.fdatasync(fd)
            fsync_dir(directory)
        return cls(sb_id, path, fd, sb.FILE_HEADER_SIZE)

    @classmethod
    def open(cls, path: Path) -> SuperblockFile:
        """Open an existing superblock; ValueError when its file header is not ours."""
        fd = os.open(path, os.O_RDWR)
        try:
            sb_id = sb.parse_file_header(os.pread(fd, sb.FILE_HEADER_SIZE, 0))
        except ValueError:
            os.close(fd)
            raise
        return cls(sb_id, path, fd, os.fstat(fd).st_size)


def _snapshot_layout(head: bytes) -> tuple[int, int, int, int, int] | None:
    """(capacity, count, max_seq, watermarks, body crc) of a v2 index file's header, or None."""
    if len(head) < sb.INDEX_HEADER_SIZE + sb.SNAPSHOT_HEADER_SIZE or head[:8] != sb.INDEX_MAGIC_V2:
        return None
    h = head[sb.INDEX_HEADER_SIZE :]
    crc, slot, cap, count, max_seq, n_water, body_crc = struct.unpack_from("<IIQQQII", h, 0)
    if crc != sb.crc32c(h[4:]) or slot != sb.SLOT_SIZE:
        return None
    return cap, count, max_seq, n_water, body_crc


def list_superblocks(directory: Path) -> list[tuple[int, Path]]:
    """(id, path) of every superblock file in `directory`, oldest first."""
    found = []
    for entry in directory.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return sorted(found)


class IndexLog:
    """The append-only index log: crc-framed entries, fsynced with the data they describe."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self.fd = -1
        self.size = 0

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def open(self, valid_len: int) -> None:
        """Open for appending, cutting off anything after `valid_len` (a torn or damaged tail)."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if valid_len <= sb.INDEX_HEADER_SIZE:  # nothing usable (a v2 magic alone is cut too)
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, sb.INDEX_MAGIC, 0)
            valid_len = sb.INDEX_HEADER_SIZE
        elif os.fstat(self.fd).st_size != valid_len:
            os.ftruncate(self.fd, valid_len)
        self.size = valid_len
        if self.durable:
            os.fdatasync(self.fd)

    def append(self, data: bytes) -> None:
        if not data:
            return
        os.pwrite(self.fd, data, self.size)
        self.size += len(data)
        if self.durable:
            os.fdatasync(self.fd)

    def rewrite(self, entries: list[bytes]) -> None:
        """Replace the log with a snapshot, atomically (write, fsync, rename, fsync dir)."""
        tmp = self.path.with_suffix(".tmp")
        data = sb.INDEX_MAGIC + b"".join(entries)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.durable:
            fsync_dir(self.path.parent)
        old, self.fd = self.fd, os.open(self.path, os.O_RDWR)
        if old >= 0:
            os.close(old)
        self.size = len(data)

    def rewrite_parts(self, parts: list[bytes]) -> None:
        """Replace the log with a v2 file (sb.pack_snapshot parts), atomically, without joining them."""
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        size = 0
        try:
            for part in parts:
                view = memoryview(part)
                size += len(view)
                while view:
                    view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.durable:
            fsync_dir(self.path.parent)
        old, self.fd = self.fd, os.open(self.path, os.O_RDWR)
        if old >= 0:
            os.close(old)
        self.size = size

    def load_table(self, resolve=None) -> tuple[object, int, int]:
        """(table state, valid length, snapshot length) of the index file, into the compact table.

        A v2 file's slots are read straight into the table (one read, no re-insert); only the
        entries after the snapshot are replayed. A v1 log (or a damaged v2 one) goes through
        sb.load_table_index, which replays it or reports it unusable (valid length 0).
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return sb.TableState(resolve=resolve), 0, 0
        try:
            head = os.pread(fd, sb.INDEX_HEADER_SIZE + sb.SNAPSHOT_HEADER_SIZE, 0)
            fixed = _snapshot_layout(head)
            if fixed is not None:
                cap, count, max_seq, n_water, body_crc = fixed
                off = sb.INDEX_HEADER_SIZE + sb.SNAPSHOT_HEADER_SIZE
                marks = os.pread(fd, n_water * 16, off)
                try:
                    table = sb.ChunkIndex.read_fd(fd, off + len(marks), cap)
                except ValueError:
                    table = None
                if (
                    table is not None
                    and len(marks) == n_water * 16
                    and len(table) == count
                    and table.crc32c(sb.crc32c(marks)) == body_crc
                ):
                    state = sb.TableState(table, resolve)
                    for i in range(n_water):
                        k, w = struct.unpack_from("<QQ", marks, i * 16)
                        state.water[k] = w
                    state.max_seq = max_seq
                    end = off + len(marks) + cap * sb.SLOT_SIZE
                    tail = os.pread(fd, max(0, os.fstat(fd).st_size - end), end)
                    return state, end + sb.replay_entries(state, tail, 0), end
            data = self.read()
        finally:
            os.close(fd)
        state, valid = sb.load_table_index(data, resolve)
        return state, valid, 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DeferredCloser:
    """Close retired superblock fds only after in-flight reads are surely done with them.

    A reader may have looked up a location just before compaction moved the chunk; closing
    the fd at once could let the number be reused under it.
    """

    def __init__(self, grace: float = 30.0) -> None:
        self.grace = grace
        self.pending: list[tuple[float, int]] = []

    def add(self, fd: int) -> None:
        self.pending.append((time.monotonic() + self.grace, fd))

    def run(self, force: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for deadline, fd in self.pending:
            if force or deadline <= now:
                with contextlib.suppress(OSError):
                    os.close(fd)
            else:
                keep.append((deadline, fd))
        self.pending = keep
