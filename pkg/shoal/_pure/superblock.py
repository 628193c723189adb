"""Superblock record framing, recovery scan and index-log load: the pure-Python twin.

Same API and results as the compiled shoal._ext.superblock (ext/superblock.pyx); the tests
check that both agree. The on-disk layout is documented in docs/storage.md.

A superblock file is a 64-byte file header followed by records, each 8-byte aligned:

    0   4  magic b"SHRC"           16  8  seq (u64, global write order)
    4   1  version (1)             24 32  sha256 of the data
    5   1  flags (1 live, 2 tomb)  56 32  data checksum (crc32c: 4 LE bytes + zeros; or blake3)
    6   1  checksum algorithm      88  n  chunk id (ASCII, 1..128 bytes)
    7   1  id length n             ..  m  data
    8   4  data length m (u32)     ..  8  footer: b"SHFT" + header crc
   12   4  header crc (crc32c of bytes 0..12, 16..88 and the id)     zero padding to 8

The index log is an 8-byte header followed by 8-byte aligned entries, each protected by a crc.
"""

from __future__ import annotations

import os
import struct

from crc32c import crc32c as _crc32c_lib

MAGIC = b"SHRC"
FOOTER_MAGIC = b"SHFT"
FILE_MAGIC = b"SHOALSB\x01"
INDEX_MAGIC = b"SHIX\x01\x00\x00\x00"
VERSION = 1
HEADER_SIZE = 88
FOOTER_SIZE = 8
FILE_HEADER_SIZE = 64
INDEX_HEADER_SIZE = 8
INDEX_ENTRY_SIZE = 96
ALIGN = 8
MAX_ID_LEN = 128
MAX_DATA_LEN = 1 << 30
FLAG_LIVE = 1
FLAG_TOMBSTONE = 2
ALGO_CRC32C = 1
ALGO_BLAKE3 = 2
KIND_PUT = 1
KIND_DEL = 2
KIND_RETIRE = 3
KIND_MARK = 4

_HDR = struct.Struct("<4sBBBBII")  # magic, version, flags, algo, id_len, data_len, header_crc
_SEQ = struct.Struct("<Q")
_IDX = struct.Struct("<IBBBBIQIQ")  # crc, kind, id_len, algo, flags, sb, rec_off, data_len, seq
_FILE = struct.Struct("<8sII")
_ZERO32 = bytes(32)
_RESYNC_BLOCK = 1 << 20


class BadRecord(ValueError):
    """Bytes that are not a well-framed record (torn, damaged, or not a record at all)."""


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C (Castagnoli) of `data`, continuing from `value` (zlib-style chaining)."""
    return _crc32c_lib(data, value)


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def record_size(id_len: int, data_len: int) -> int:
    """Bytes a record with this id length and data length takes on disk, padding included."""
    return _align(HEADER_SIZE + id_len + data_len + FOOTER_SIZE)


def index_entry_size(id_len: int) -> int:
    return _align(INDEX_ENTRY_SIZE + id_len)


def pack_file_header(sb_id: int) -> bytes:
    """The 64-byte header that starts every superblock file."""
    head = _FILE.pack(FILE_MAGIC, sb_id, 0)[:12]
    return head + struct.pack("<I", crc32c(head)) + bytes(FILE_HEADER_SIZE - 16)


def parse_file_header(buf: bytes) -> int:
    """The superblock id stored in a file header; BadRecord when it is not one."""
    if len(buf) < FILE_HEADER_SIZE:
        raise BadRecord("short superblock file header")
    magic, sb_id, crc = _FILE.unpack_from(buf, 0)
    if magic != FILE_MAGIC or crc != crc32c(bytes(buf[:12])):
        raise BadRecord("not a superblock file header")
    return sb_id


def _header_crc(hdr: bytes | bytearray, chunk_id: bytes) -> int:
    c = crc32c(hdr[0:12])
    c = crc32c(hdr[16:HEADER_SIZE], c)
    return crc32c(chunk_id, c)


def _check_fields(
    chunk_id: bytes, flags: int, algo: int, data_len: int, sha256: bytes, checksum: bytes
) -> None:
    if not 1 <= len(chunk_id) <= MAX_ID_LEN:
        raise ValueError("chunk id must be 1..128 bytes")
    if flags not in (FLAG_LIVE, FLAG_TOMBSTONE):
        raise ValueError("flags must be FLAG_LIVE or FLAG_TOMBSTONE")
    if algo not in (ALGO_CRC32C, ALGO_BLAKE3):
        raise ValueError("unknown checksum algorithm")
    if not 0 <= data_len <= MAX_DATA_LEN or (flags == FLAG_TOMBSTONE and data_len):
        raise ValueError("bad data length")
    if len(sha256) != 32 or len(checksum) != 32:
        raise ValueError("sha256 and checksum must be 32 bytes")


def pack_record(
    chunk_id: bytes, flags: int, algo: int, seq: int, sha256: bytes, checksum: bytes, data_len: int
) -> tuple[bytes, bytes]:
    """(prefix, suffix) framing `data_len` bytes of data: write prefix + data + suffix.

    Returned apart so the data is handed to os.pwritev as is, never copied.
    """
    _check_fields(chunk_id, flags, algo, data_len, sha256, checksum)
    hdr = bytearray(HEADER_SIZE)
    _HDR.pack_into(hdr, 0, MAGIC, VERSION, flags, algo, len(chunk_id), data_len, 0)
    _SEQ.pack_into(hdr, 16, seq)
    hdr[24:56] = sha256
    hdr[56:88] = checksum
    crc = _header_crc(hdr, chunk_id)
    struct.pack_into("<I", hdr, 12, crc)
    size = record_size(len(chunk_id), data_len)
    pad = size - (HEADER_SIZE + len(chunk_id) + data_len + FOOTER_SIZE)
    suffix = FOOTER_MAGIC + struct.pack("<I", crc) + bytes(pad)
    return bytes(hdr) + chunk_id, suffix


def parse_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple:
    """Parse and verify a record header at `offset` of `buf` (header and id must be in buf).

    Returns (flags, algo, seq, data_len, sha256, checksum, chunk_id: str, header_crc).
    """
    mv = memoryview(buf)
    if len(mv) - offset < HEADER_SIZE:
        raise BadRecord("short record header")
    magic, version, flags, algo, id_len, data_len, crc = _HDR.unpack_from(mv, offset)
    if magic != MAGIC:
        raise BadRecord("bad record magic")
    if (
        version != VERSION
        or flags not in (FLAG_LIVE, FLAG_TOMBSTONE)
        or algo not in (ALGO_CRC32C, ALGO_BLAKE3)
    ):
        raise BadRecord("bad record version, flags or algorithm")
    if not 1 <= id_len <= MAX_ID_LEN or data_len > MAX_DATA_LEN or (flags == FLAG_TOMBSTONE and data_len):
        raise BadRecord("bad record lengths")
    if len(mv) - offset < HEADER_SIZE + id_len:
        raise BadRecord("short record id")
    hdr = bytes(mv[offset : offset + HEADER_SIZE])
    chunk_id = bytes(mv[offset + HEADER_SIZE : offset + HEADER_SIZE + id_len])
    if _header_crc(hdr, chunk_id) != crc:
        raise BadRecord("record header checksum mismatch")
    (seq,) = _SEQ.unpack_from(hdr, 16)
    return (flags, algo, seq, data_len, hdr[24:56], hdr[56:88], chunk_id.decode("latin-1"), crc)


def _check_at(fd: int, off: int, end: int) -> tuple | None:
    """The scan tuple of a well-framed record at `off`, or None."""
    if off + HEADER_SIZE + FOOTER_SIZE > end:
        return None
    buf = os.pread(fd, min(HEADER_SIZE + MAX_ID_LEN, end - off), off)
    try:
        flags, algo, seq, data_len, sha, cks, chunk_id, crc = parse_header(buf)
    except BadRecord:
        return None
    id_len = len(chunk_id)
    size = record_size(id_len, data_len)
    if off + size > end:
        return None
    foot = os.pread(fd, FOOTER_SIZE, off + HEADER_SIZE + id_len + data_len)
    if foot != FOOTER_MAGIC + struct.pack("<I", crc):
        return None
    return (off, flags, algo, seq, data_len, sha, cks, chunk_id), size


def _resync(fd: int, off: int, end: int) -> int:
    """The offset of the next well-framed record at or after `off` (8-byte aligned), or -1."""
    while off < end:
        block = os.pread(fd, min(_RESYNC_BLOCK, end - off), off)
        if not block:
            return -1
        pos = block.find(MAGIC)
        while pos >= 0:
            if pos % ALIGN == 0 and _check_at(fd, off + pos, end) is not None:
                return off + pos
            pos = block.find(MAGIC, pos + 1)
        off += len(block)
    return -1


def scan(fd: int, start: int, end: int) -> tuple[list, list, int]:
    """Walk the records of a superblock file between `start` and `end` (file offsets).

    Checks framing only (magic, header crc, footer), not the data checksum. Returns
    (records, damaged, last_end): records as (offset, flags, algo, seq, data_len, sha256,
    checksum, chunk_id); damaged as (start, end) ranges skipped to the next well-framed
    record (a range ending at `end` is a torn tail); last_end just past the last good record.
    """
    records: list = []
    damaged: list = []
    off = start
    last_end = start
    while off < end:
        found = _check_at(fd, off, end)
        if found is not None:
            rec, size = found
            records.append(rec)
            off += size
            last_end = off
            continue
        nxt = _resync(fd, off + ALIGN, end)
        if nxt < 0:
            damaged.append((off, end))
            break
        damaged.append((off, nxt))
        off = nxt
    return records, damaged, last_end


def pack_index_entry(
    kind: int,
    chunk_id: bytes,
    sb_id: int,
    rec_off: int,
    data_len: int = 0,
    seq: int = 0,
    sha256: bytes = _ZERO32,
    checksum: bytes = _ZERO32,
    algo: int = 0,
) -> bytes:
    """One crc-protected entry of the append-only index log."""
    if kind not in (KIND_PUT, KIND_DEL, KIND_RETIRE, KIND_MARK):
        raise ValueError("unknown index entry kind")
    if len(chunk_id) > MAX_ID_LEN or (kind in (KIND_PUT, KIND_DEL) and not chunk_id):
        raise ValueError("bad chunk id length")
    if len(sha256) != 32 or len(checksum) != 32:
        raise ValueError("sha256 and checksum must be 32 bytes")
    size = index_entry_size(len(chunk_id))
    buf = bytearray(size)
    _IDX.pack_into(buf, 0, 0, kind, len(chunk_id), algo, 0, sb_id, rec_off, data_len, seq)
    buf[32:64] = sha256
    buf[64:96] = checksum
    buf[96 : 96 + len(chunk_id)] = chunk_id
    struct.pack_into("<I", buf, 0, crc32c(memoryview(buf)[4:]))
    return bytes(buf)


class IndexState:
    """The index a replay builds; shared by load_index and the store's recovery scan."""

    __slots__ = ("live", "max_seq", "retired", "tombs", "water")

    def __init__(self) -> None:
        self.live: dict[str, tuple] = {}
        self.tombs: dict[str, tuple] = {}
        self.water: dict[int, int] = {}
        self.retired: set[int] = set()
        self.max_seq = 0


def apply_entry(
    state,
    kind: int,
    chunk_id: str,
    sb_id: int,
    rec_off: int,
    data_len: int,
    seq: int,
    sha256: bytes,
    checksum: bytes,
    algo: int,
) -> None:
    """Apply one index operation: the record with the highest seq wins; equal seq relocates.

    live[id] = (sb, rec_off, data_off, data_len, seq, sha256, checksum, algo);
    tombs[id] = (sb, rec_off, seq); water[sb] = end of the furthest record known in sb.
    """
    live, tombs = state.live, state.tombs
    if kind == KIND_RETIRE:
        state.retired.add(sb_id)
        state.water.pop(sb_id, None)
        for table in (live, tombs):
            for key in [k for k, v in table.items() if v[0] == sb_id]:
                del table[key]
        return
    end = rec_off + (record_size(len(chunk_id), data_len) if kind != KIND_MARK else 0)
    if end > state.water.get(sb_id, 0):
        state.water[sb_id] = end
    if kind == KIND_MARK:
        return
    if seq > state.max_seq:
        state.max_seq = seq
    cur = live.get(chunk_id)
    tomb = tombs.get(chunk_id)
    if kind == KIND_PUT:
        if (cur is not None and cur[4] > seq) or (tomb is not None and tomb[2] >= seq):
            return
        live[chunk_id] = (
            sb_id,
            rec_off,
            rec_off + HEADER_SIZE + len(chunk_id),
            data_len,
            seq,
            sha256,
            checksum,
            algo,
        )
        if tomb is not None:
            del tombs[chunk_id]
    else:
        if (cur is not None and cur[4] > seq) or (tomb is not None and tomb[2] > seq):
            return
        if cur is not None:
            del live[chunk_id]
        tombs[chunk_id] = (sb_id, rec_off, seq)


def load_index(buf: bytes | bytearray | memoryview) -> tuple[IndexState, int]:
    """Replay an index log. Returns (state, valid_len): valid_len is where the log stops being
    well-formed (a torn or damaged entry); everything from there on is to be truncated.
    """
    state = IndexState()
    mv = memoryview(buf)
    if len(mv) < INDEX_HEADER_SIZE or bytes(mv[:INDEX_HEADER_SIZE]) != INDEX_MAGIC:
        return state, 0
    off = INDEX_HEADER_SIZE
    n = len(mv)
    while off + INDEX_ENTRY_SIZE <= n:
        crc, kind, id_len, algo, _flags, sb_id, rec_off, data_len, seq = _IDX.unpack_from(mv, off)
        if kind not in (KIND_PUT, KIND_DEL, KIND_RETIRE, KIND_MARK) or id_len > MAX_ID_LEN:
            break
        if kind in (KIND_PUT, KIND_DEL) and id_len == 0:
            break
        size = index_entry_size(id_len)
        if off + size > n or crc32c(mv[off + 4 : off + size]) != crc:
            break
        chunk_id = bytes(mv[off + 96 : off + 96 + id_len]).decode("latin-1")
        sha = bytes(mv[off + 32 : off + 64])
        cks = bytes(mv[off + 64 : off + 96])
        apply_entry(state, kind, chunk_id, sb_id, rec_off, data_len, seq, sha, cks, algo)
        off += size
    return state, off


# ---------------------------------------------------------------- the compact chunk index
#
# One open-addressing table (linear probing, backward-shift deletion, non-power-of-two capacity
# with fastrange homes) of 32-byte slots, one per chunk (live or tombstone). A slot holds no chunk
# id: the key is XXH3-64 of the id, and a reader confirms the id against the record header it
# reads anyway, so two ids with the same hash are told apart (both are stored). Little-endian:
#
#   w0  key (0 = empty slot)
#   w1  seq (48 bits) | id_len-1 (7) << 48 | flags (2) << 55 | stored time >> 33 (7) << 57
#   w2  superblock id (32) | record offset / 8 (32) << 32
#   w3  data length (31) | stored time & (2**33-1) (33) << 31
#
# The stored time is in 1/1024 s since TIME_EPOCH (0: unknown), 40 bits: until 2058.

SLOT_SIZE = 32
TIME_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
TIME_UNITS = 1024
MAX_SEQ = (1 << 48) - 1
INDEX_MAGIC_V2 = b"SHIX\x02\x00\x00\x00"
SNAPSHOT_HEADER_SIZE = 64
_SLOT = struct.Struct("<QQQQ")
_SNAP = struct.Struct("<IIQQQII")  # crc, slot size, capacity, count, max_seq, n_water, body crc
_WATER = struct.Struct("<QQ")
_M33 = (1 << 33) - 1
_M64 = (1 << 64) - 1

try:
    from xxhash import xxh3_64_intdigest as _xxh3
except ImportError:  # pragma: no cover - xxhash is a core dependency
    _xxh3 = None


def chunk_key(chunk_id: bytes) -> int:
    """The 64-bit table key of a chunk id (XXH3-64; never 0, which marks an empty slot)."""
    return _xxh3(chunk_id) or 1


def _pack_slot(key: int, sb_id: int, rec_off: int, id_len: int, data_len: int, seq: int, flags: int, t: int):
    if not 1 <= id_len <= MAX_ID_LEN or not 0 <= data_len <= MAX_DATA_LEN or not 0 <= seq <= MAX_SEQ:
        raise ValueError("index entry out of range")
    if rec_off & 7 or not 0 <= rec_off >> 3 < 1 << 32 or not 0 <= sb_id < 1 << 32 or flags not in (1, 2):
        raise ValueError("index entry out of range")
    if not 0 <= t < 1 << 40:
        raise ValueError("stored time out of range")
    return (
        key,
        seq | (id_len - 1) << 48 | flags << 55 | (t >> 33) << 57,
        sb_id | (rec_off >> 3) << 32,
        data_len | (t & _M33) << 31,
    )


def _unpack_slot(w1: int, w2: int, w3: int) -> tuple:
    return (
        w2 & 0xFFFFFFFF,
        (w2 >> 32) << 3,
        ((w1 >> 48) & 0x7F) + 1,
        w3 & 0x7FFFFFFF,
        w1 & MAX_SEQ,
        (w1 >> 55) & 3,
        (w1 >> 57) << 33 | w3 >> 31,
    )


class ChunkIndex:
    """Chunk locations in one contiguous buffer: 32 bytes a slot, at most 90% full.

    Entries are (sb, rec_off, id_len, data_len, seq, flags, time); select() adds the key first.
    Grows by a tenth (not doubling) so the bytes per chunk stay within 32/0.9 .. 32/0.82.
    """

    def __init__(self, capacity: int = 0) -> None:
        self._cap = max(0, capacity)
        self._buf = bytearray(self._cap * SLOT_SIZE)
        self._count = 0
        self._live = 0

    # -- figures
    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def live_count(self) -> int:
        return self._live

    @property
    def nbytes(self) -> int:
        return len(self._buf)

    # -- internals
    def _home(self, key: int) -> int:
        return (key * self._cap) >> 64

    def _grow(self) -> None:
        old, old_cap = self._buf, self._cap
        self._cap = old_cap + old_cap // 10 + 64
        self._buf = bytearray(self._cap * SLOT_SIZE)
        for i in range(old_cap):
            w = _SLOT.unpack_from(old, i * SLOT_SIZE)
            if w[0]:
                self._put_raw(w)

    def _put_raw(self, w: tuple) -> None:
        i = self._home(w[0])
        buf, cap = self._buf, self._cap
        while _SLOT.unpack_from(buf, i * SLOT_SIZE)[0]:
            i = i + 1 if i + 1 < cap else 0
        _SLOT.pack_into(buf, i * SLOT_SIZE, *w)

    def _positions(self, key: int):
        if not self._cap:
            return
        i = self._home(key)
        buf, cap = self._buf, self._cap
        while True:
            w = _SLOT.unpack_from(buf, i * SLOT_SIZE)
            if not w[0]:
                return
            if w[0] == key:
                yield i, w
            i = i + 1 if i + 1 < cap else 0

    def _delete_at(self, i: int) -> None:
        buf, cap = self._buf, self._cap
        j = i
        while True:
            j = j + 1 if j + 1 < cap else 0
            w = _SLOT.unpack_from(buf, j * SLOT_SIZE)
            if not w[0]:
                break
            k = self._home(w[0])
            if (i < k <= j) if i <= j else (i < k or k <= j):
                continue  # its home lies between the hole and it: it stays
            _SLOT.pack_into(buf, i * SLOT_SIZE, *w)
            i = j
        _SLOT.pack_into(buf, i * SLOT_SIZE, 0, 0, 0, 0)

    # -- operations
    def get(self, key: int) -> list[tuple]:
        """Every entry under `key` (usually 0 or 1; more only on a hash collision)."""
        return [_unpack_slot(w[1], w[2], w[3]) for _, w in self._positions(key)]

    def insert(
        self, key: int, sb_id: int, rec_off: int, id_len: int, data_len: int, seq: int, flags: int, t: int = 0
    ) -> None:
        """Add an entry (another one under the same key is kept: a different chunk id)."""
        w = _pack_slot(key, sb_id, rec_off, id_len, data_len, seq, flags, t)
        if (self._count + 1) * 10 > self._cap * 9:
            self._grow()
        self._put_raw(w)
        self._count += 1
        self._live += flags == FLAG_LIVE

    def replace(
        self,
        key: int,
        old_sb: int,
        old_off: int,
        sb_id: int,
        rec_off: int,
        id_len: int,
        data_len: int,
        seq: int,
        flags: int,
        t: int = 0,
    ) -> bool:
        """Overwrite the entry under `key` that is at (old_sb, old_off); False if there is none."""
        w = _pack_slot(key, sb_id, rec_off, id_len, data_len, seq, flags, t)
        for i, cur in self._positions(key):
            if cur[2] == old_sb | (old_off >> 3) << 32:
                self._live += (flags == FLAG_LIVE) - (((cur[1] >> 55) & 3) == FLAG_LIVE)
                _SLOT.pack_into(self._buf, i * SLOT_SIZE, *w)
                return True
        return False

    def remove(self, key: int, sb_id: int, rec_off: int) -> bool:
        for i, cur in self._positions(key):
            if cur[2] == sb_id | (rec_off >> 3) << 32:
                self._live -= ((cur[1] >> 55) & 3) == FLAG_LIVE
                self._count -= 1
                self._delete_at(i)
                return True
        return False

    def drop_superblock(self, sb_id: int) -> int:
        """Remove every entry in superblock `sb_id` (retired); the table is rebuilt in place."""
        old = self._buf
        self._buf = bytearray(self._cap * SLOT_SIZE)
        dropped = 0
        for i in range(self._cap):
            w = _SLOT.unpack_from(old, i * SLOT_SIZE)
            if not w[0]:
                continue
            if w[2] & 0xFFFFFFFF == sb_id:
                dropped += 1
                self._count -= 1
                self._live -= ((w[1] >> 55) & 3) == FLAG_LIVE
            else:
                self._put_raw(w)
        return dropped

    def select(self, sb_id: int = -1, flags: int = 3) -> list[tuple]:
        """(key, sb, rec_off, id_len, data_len, seq, flags, time) of the entries in `sb_id`
        (every superblock when -1) whose flags are in the mask `flags`, in slot order."""
        out = []
        buf = self._buf
        for i in range(self._cap):
            w = _SLOT.unpack_from(buf, i * SLOT_SIZE)
            if not w[0] or not ((w[1] >> 55) & 3) & flags:
                continue
            if sb_id >= 0 and w[2] & 0xFFFFFFFF != sb_id:
                continue
            out.append((w[0], *_unpack_slot(w[1], w[2], w[3])))
        return out

    def usage(self) -> dict[int, list[int]]:
        """{sb: [live records, tombstones, bytes their records take]}."""
        out: dict[int, list[int]] = {}
        buf = self._buf
        for i in range(self._cap):
            w = _SLOT.unpack_from(buf, i * SLOT_SIZE)
            if not w[0]:
                continue
            e = _unpack_slot(w[1], w[2], w[3])
            u = out.setdefault(e[0], [0, 0, 0])
            u[0 if e[5] == FLAG_LIVE else 1] += 1
            u[2] += record_size(e[2], e[3])
        return out

    def dump(self) -> bytes:
        """The slots as they are in memory (what a snapshot stores)."""
        return bytes(self._buf)

    def crc32c(self, value: int = 0) -> int:
        """CRC-32C of the slots, continuing from `value` (a snapshot's body check)."""
        return crc32c(self._buf, value)

    @classmethod
    def read_fd(cls, fd: int, offset: int, capacity: int) -> ChunkIndex:
        """A table whose slots are read straight from a snapshot file: one read, no re-insert."""
        buf = bytearray(capacity * SLOT_SIZE)
        got = os.preadv(fd, [buf], offset) if buf else 0
        if got != len(buf):
            raise ValueError("short table snapshot")
        t = cls.load(memoryview(b""))
        t._cap, t._buf = capacity, buf
        t._recount()
        return t

    def _recount(self) -> None:
        self._count = self._live = 0
        for i in range(self._cap):
            w = _SLOT.unpack_from(self._buf, i * SLOT_SIZE)
            if w[0]:
                self._count += 1
                self._live += ((w[1] >> 55) & 3) == FLAG_LIVE
        if self._count * 10 > self._cap * 9 + 9:
            raise ValueError("table dump is over-full")

    @classmethod
    def load(cls, buf: bytes | bytearray | memoryview) -> ChunkIndex:
        """A table from dump() bytes, as they are (one copy, no re-insert)."""
        mv = memoryview(buf).cast("B")
        if len(mv) % SLOT_SIZE:
            raise ValueError("a table dump is a whole number of slots")
        t = cls(0)
        t._cap = len(mv) // SLOT_SIZE
        t._buf = bytearray(mv)
        t._recount()
        return t


class TableState:
    """What a replay into the compact table builds (the table twin of IndexState)."""

    __slots__ = ("max_seq", "resolve", "retired", "table", "water")

    def __init__(self, table: ChunkIndex | None = None, resolve=None) -> None:
        self.table = table if table is not None else ChunkIndex()
        self.water: dict[int, int] = {}
        self.retired: set[int] = set()
        self.max_seq = 0
        self.resolve = resolve  # (sb, rec_off, id_len) -> chunk id there, or None if unreadable


def find_entry(state, key: int, chunk_id: str) -> tuple | None:
    """The entry of `chunk_id` among those under its key (ids confirmed through state.resolve)."""
    n = len(chunk_id)
    for e in state.table.get(key):
        if e[2] != n:
            continue
        if state.resolve is None:
            return e
        found = state.resolve(e[0], e[1], e[2])
        if found is None or found == chunk_id:
            return e
    return None


def apply_table_entry(
    state, kind: int, chunk_id: str, sb_id: int, rec_off: int, data_len: int, seq: int, t: int = 0
) -> None:
    """apply_entry on the compact table: the record with the highest seq wins; equal seq relocates."""
    if kind == KIND_RETIRE:
        state.retired.add(sb_id)
        state.water.pop(sb_id, None)
        state.table.drop_superblock(sb_id)
        return
    end = rec_off + (record_size(len(chunk_id), data_len) if kind != KIND_MARK else 0)
    if end > state.water.get(sb_id, 0):
        state.water[sb_id] = end
    if kind == KIND_MARK:
        return
    if seq > state.max_seq:
        state.max_seq = seq
    key = chunk_key(chunk_id.encode("latin-1"))
    cur = find_entry(state, key, chunk_id)
    flags = FLAG_LIVE if kind == KIND_PUT else FLAG_TOMBSTONE
    if cur is not None:
        cseq, cflags = cur[4], cur[5]
        if cflags == FLAG_LIVE and cseq > seq:
            return
        if cflags == FLAG_TOMBSTONE and (cseq > seq or (cseq == seq and kind == KIND_PUT)):
            return
        state.table.replace(
            key, cur[0], cur[1], sb_id, rec_off, len(chunk_id), data_len if flags == 1 else 0, seq, flags, t
        )
    else:
        state.table.insert(key, sb_id, rec_off, len(chunk_id), data_len if flags == 1 else 0, seq, flags, t)


def pack_snapshot(table: ChunkIndex, water: dict[int, int], max_seq: int) -> list[bytes]:
    """The parts of a v2 index file: magic, snapshot header, watermarks, the table's slots.

    Entries appended after it (pack_index_entry) are replayed on top when it is loaded.
    """
    body = table.dump()
    marks = b"".join(_WATER.pack(k, v) for k, v in sorted(water.items()))
    body_crc = crc32c(body, crc32c(marks))
    head = _SNAP.pack(0, SLOT_SIZE, table.capacity, len(table), max_seq, len(water), body_crc)
    head += bytes(SNAPSHOT_HEADER_SIZE - len(head))
    head = struct.pack("<I", crc32c(head[4:])) + head[4:]
    return [INDEX_MAGIC_V2, head, marks, body]


def replay_entries(state, buf: bytes | bytearray | memoryview, off: int) -> int:
    """Apply the v1 entries of `buf` from `off` on; the offset where they stop being well-formed."""
    mv = memoryview(buf).cast("B")
    n = len(mv)
    while off + INDEX_ENTRY_SIZE <= n:
        crc, kind, id_len, _algo, _flags, sb_id, rec_off, data_len, seq = _IDX.unpack_from(mv, off)
        if kind not in (KIND_PUT, KIND_DEL, KIND_RETIRE, KIND_MARK) or id_len > MAX_ID_LEN:
            break
        if kind in (KIND_PUT, KIND_DEL) and id_len == 0:
            break
        size = index_entry_size(id_len)
        if off + size > n or crc32c(mv[off + 4 : off + size]) != crc:
            break
        chunk_id = bytes(mv[off + 96 : off + 96 + id_len]).decode("latin-1")
        apply_table_entry(state, kind, chunk_id, sb_id, rec_off, data_len, seq, 0)
        off += size
    return off


def load_table_index(buf: bytes | bytearray | memoryview, resolve=None) -> tuple[TableState, int]:
    """Load an index file into the compact table: (state, valid_len), as load_index.

    A v2 file's snapshot is taken as it is (its slots are the table); the entries after it,
    and every entry of a v1 log, are replayed. A damaged snapshot gives valid_len 8 (only the magic holds: a full scan rebuilds).
    Replayed entries get stored time 0 (unknown): only a snapshot carries stored times.
    """
    mv = memoryview(buf).cast("B")
    state = TableState(resolve=resolve)
    if len(mv) < INDEX_HEADER_SIZE:
        return state, 0
    magic = bytes(mv[:INDEX_HEADER_SIZE])
    if magic == INDEX_MAGIC:
        return state, replay_entries(state, mv, INDEX_HEADER_SIZE)
    if magic != INDEX_MAGIC_V2 or len(mv) < INDEX_HEADER_SIZE + SNAPSHOT_HEADER_SIZE:
        return state, 0
    off = INDEX_HEADER_SIZE
    head = mv[off : off + SNAPSHOT_HEADER_SIZE]
    crc, slot, cap, count, max_seq, n_water, body_crc = _SNAP.unpack_from(head, 0)
    if crc != crc32c(head[4:]) or slot != SLOT_SIZE:
        return state, 8
    off += SNAPSHOT_HEADER_SIZE
    end = off + n_water * _WATER.size + cap * SLOT_SIZE
    if end > len(mv):
        return state, 8
    marks = mv[off : off + n_water * _WATER.size]
    body = mv[off + len(marks) : end]
    if crc32c(body, crc32c(marks)) != body_crc:
        return state, 8
    try:
        state.table = ChunkIndex.load(body)
    except ValueError:
        return state, 8
    if len(state.table) != count:
        return TableState(resolve=resolve), 8
    for i in range(n_water):
        sb_id, w = _WATER.unpack_from(marks, i * _WATER.size)
        state.water[sb_id] = w
    state.max_seq = max_seq
    return state, replay_entries(state, mv, end)
