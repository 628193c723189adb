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
