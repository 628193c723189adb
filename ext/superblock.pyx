# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: sources = ext/xxhash/xxhash.c ext/xxhash/shoal_dispatch.c
# distutils: include_dirs = ext/xxhash
"""Superblock record framing, recovery scan and index-log load (compiled).

The hot paths of the storage node: pack/parse record headers, walk a superblock file on
recovery (framing and footers checked, torn tails and damaged ranges found, the GIL
released while reading), and replay the index log. Same API and results as the twin
shoal._pure.superblock, where the layout is documented.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
import os as _os
import struct as _struct

from crc32c import crc32c as _crc32c_lib


cdef extern from "unistd.h" nogil:
    ssize_t pread(int fd, void *buf, size_t count, long offset)


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

cdef enum:
    C_HEADER = 88
    C_FOOTER = 8
    C_MAX_ID = 128
    C_IDX_ENTRY = 96
    C_IDX_HEADER = 8
    C_MAX_DATA = 1073741824
    RESYNC_BLOCK = 1048576

cdef const char* C_MAGIC = b"SHRC"
cdef const char* C_FOOTER_MAGIC = b"SHFT"

cdef bytes _ZERO32 = bytes(32)


class BadRecord(ValueError):
    """Bytes that are not a well-framed record (torn, damaged, or not a record at all)."""


# ---------------------------------------------------------------- crc32c (slice-by-8)

cdef uint32_t _T[8][256]


cdef void _init_table() noexcept:
    cdef uint32_t i, j, c
    for i in range(256):
        c = i
        for j in range(8):
            c = (c >> 1) ^ (0x82F63B78 if (c & 1) else 0)
        _T[0][i] = c
    for i in range(256):
        for j in range(1, 8):
            _T[j][i] = (_T[j - 1][i] >> 8) ^ _T[0][_T[j - 1][i] & 0xFF]


_init_table()


cdef inline uint32_t _get32(const uint8_t* p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint64_t _get64(const uint8_t* p) noexcept nogil:
    return <uint64_t>_get32(p) | (<uint64_t>_get32(p + 4) << 32)


cdef inline void _put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline void _put64(uint8_t* p, uint64_t v) noexcept nogil:
    _put32(p, <uint32_t>v)
    _put32(p + 4, <uint32_t>(v >> 32))


cdef uint32_t _crc(uint32_t crc, const uint8_t* p, size_t n) noexcept nogil:
    cdef uint32_t one, two
    crc = ~crc
    while n >= 8:
        one = _get32(p) ^ crc
        two = _get32(p + 4)
        crc = (_T[7][one & 0xFF] ^ _T[6][(one >> 8) & 0xFF] ^ _T[5][(one >> 16) & 0xFF] ^ _T[4][one >> 24]
               ^ _T[3][two & 0xFF] ^ _T[2][(two >> 8) & 0xFF] ^ _T[1][(two >> 16) & 0xFF] ^ _T[0][two >> 24])
        p += 8
        n -= 8
    while n:
        crc = (crc >> 8) ^ _T[0][(crc ^ p[0]) & 0xFF]
        p += 1
        n -= 1
    return ~crc


def crc32c(data, unsigned int value=0):
    """CRC-32C (Castagnoli) of `data`, continuing from `value` (zlib-style chaining)."""
    cdef const uint8_t[::1] view = memoryview(data).cast("B")
    cdef uint32_t out
    cdef size_t n = view.shape[0]
    if n == 0:
        return value
    with nogil:
        out = _crc(value, &view[0], n)
    return out


cdef inline int64_t _align(int64_t n) noexcept nogil:
    return (n + 7) & ~(<int64_t>7)


def record_size(int id_len, int64_t data_len):
    """Bytes a record with this id length and data length takes on disk, padding included."""
    return _align(C_HEADER + id_len + data_len + C_FOOTER)


def index_entry_size(int id_len):
    return _align(C_IDX_ENTRY + id_len)


# ---------------------------------------------------------------- file header

def pack_file_header(uint32_t sb_id):
    """The 64-byte header that starts every superblock file."""
    cdef uint8_t buf[64]
    memset(buf, 0, 64)
    memcpy(buf, <const char*>b"SHOALSB\x01", 8)
    _put32(buf + 8, sb_id)
    _put32(buf + 12, _crc(0, buf, 12))
    return (<char*>buf)[:64]


def parse_file_header(buf):
    """The superblock id stored in a file header; BadRecord when it is not one."""
    cdef bytes b = bytes(buf[:64])
    if len(b) < 64:
        raise BadRecord("short superblock file header")
    cdef const uint8_t* p = <const uint8_t*><const char*>b
    if memcmp(p, <const char*>b"SHOALSB\x01", 8) != 0 or _get32(p + 12) != _crc(0, p, 12):
        raise BadRecord("not a superblock file header")
    return _get32(p + 8)


# ---------------------------------------------------------------- records

cdef struct Rec:
    int64_t off
    uint8_t flags
    uint8_t algo
    uint8_t id_len
    uint32_t data_len
    uint64_t seq
    uint32_t crc
    uint8_t sha[32]
    uint8_t cks[32]
    uint8_t cid[128]


cdef inline uint32_t _header_crc(const uint8_t* hdr, const uint8_t* cid, size_t id_len) noexcept nogil:
    cdef uint32_t c = _crc(0, hdr, 12)
    c = _crc(c, hdr + 16, C_HEADER - 16)
    return _crc(c, cid, id_len)


cdef int _parse(const uint8_t* p, size_t avail, Rec* r) noexcept nogil:
    """0 when p holds a valid header + id (filled into r); else an error code."""
    cdef uint8_t id_len
    if avail < C_HEADER:
        return 1
    if memcmp(p, C_MAGIC, 4) != 0:
        return 2
    if p[4] != 1 or (p[5] != 1 and p[5] != 2) or (p[6] != 1 and p[6] != 2):
        return 3
    id_len = p[7]
    r.data_len = _get32(p + 8)
    if id_len < 1 or id_len > C_MAX_ID or r.data_len > C_MAX_DATA or (p[5] == 2 and r.data_len != 0):
        return 4
    if avail < C_HEADER + id_len:
        return 5
    r.crc = _get32(p + 12)
    if _header_crc(p, p + C_HEADER, id_len) != r.crc:
        return 6
    r.flags = p[5]
    r.algo = p[6]
    r.id_len = id_len
    r.seq = _get64(p + 16)
    memcpy(r.sha, p + 24, 32)
    memcpy(r.cks, p + 56, 32)
    memcpy(r.cid, p + C_HEADER, id_len)
    return 0


_PARSE_ERRORS = {
    1: "short record header",
    2: "bad record magic",
    3: "bad record version, flags or algorithm",
    4: "bad record lengths",
    5: "short record id",
    6: "record header checksum mismatch",
}


def pack_record(bytes chunk_id, int flags, int algo, uint64_t seq, bytes sha256, bytes checksum, int64_t data_len):
    """(prefix, suffix) framing `data_len` bytes of data: write prefix + data + suffix.

    Returned apart so the data is handed to os.pwritev as is, never copied.
    """
    cdef Py_ssize_t id_len = len(chunk_id)
    cdef uint8_t hdr[C_HEADER + C_MAX_ID]
    cdef uint8_t suffix[16]
    cdef uint32_t crc
    cdef int64_t size, pad
    if id_len < 1 or id_len > C_MAX_ID:
        raise ValueError("chunk id must be 1..128 bytes")
    if flags != 1 and flags != 2:
        raise ValueError("flags must be FLAG_LIVE or FLAG_TOMBSTONE")
    if algo != 1 and algo != 2:
        raise ValueError("unknown checksum algorithm")
    if data_len < 0 or data_len > C_MAX_DATA or (flags == 2 and data_len != 0):
        raise ValueError("bad data length")
    if len(sha256) != 32 or len(checksum) != 32:
        raise ValueError("sha256 and checksum must be 32 bytes")
    memcpy(hdr, C_MAGIC, 4)
    hdr[4] = 1
    hdr[5] = flags
    hdr[6] = algo
    hdr[7] = <uint8_t>id_len
    _put32(hdr + 8, <uint32_t>data_len)
    _put32(hdr + 12, 0)
    _put64(hdr + 16, seq)
    memcpy(hdr + 24, <const char*>sha256, 32)
    memcpy(hdr + 56, <const char*>checksum, 32)
    memcpy(hdr + C_HEADER, <const char*>chunk_id, id_len)
    crc = _header_crc(hdr, hdr + C_HEADER, id_len)
    _put32(hdr + 12, crc)
    size = _align(C_HEADER + id_len + data_len + C_FOOTER)
    pad = size - (C_HEADER + id_len + data_len + C_FOOTER)
    memset(suffix, 0, 16)
    memcpy(suffix, C_FOOTER_MAGIC, 4)
    _put32(suffix + 4, crc)
    return (<char*>hdr)[:C_HEADER + id_len], (<char*>suffix)[:C_FOOTER + pad]


def parse_header(buf, Py_ssize_t offset=0):
    """Parse and verify a record header at `offset` of `buf` (header and id must be in buf).

    Returns (flags, algo, seq, data_len, sha256, checksum, chunk_id: str, header_crc).
    """
    cdef const uint8_t[::1] view = memoryview(buf).cast("B")
    cdef Rec r
    cdef Py_ssize_t n = view.shape[0]
    cdef int err
    if offset < 0 or n - offset < C_HEADER:
        raise BadRecord("short record header")
    r.off = 0
    err = _parse(&view[offset], n - offset, &r)
    if err:
        raise BadRecord(_PARSE_ERRORS[err])
    return _rec_tuple(&r)[1:]


cdef tuple _rec_tuple(Rec* r):
    return (
        r.off,
        r.flags,
        r.algo,
        r.seq,
        r.data_len,
        (<char*>r.sha)[:32],
        (<char*>r.cks)[:32],
        (<char*>r.cid)[:r.id_len].decode("latin-1"),
        r.crc,
    )


cdef int64_t _check_at(int fd, int64_t off, int64_t end, Rec* r) noexcept nogil:
    """Size of the well-framed record at `off` (filled into r), or 0."""
    cdef uint8_t buf[C_HEADER + C_MAX_ID]
    cdef uint8_t foot[C_FOOTER]
    cdef int64_t want, size, foot_off
    cdef ssize_t got
    if off + C_HEADER + C_FOOTER > end:
        return 0
    want = C_HEADER + C_MAX_ID
    if end - off < want:
        want = end - off
    got = pread(fd, buf, want, off)
    if got < C_HEADER or _parse(buf, got, r) != 0:
        return 0
    size = _align(C_HEADER + r.id_len + r.data_len + C_FOOTER)
    if off + size > end:
        return 0
    foot_off = off + C_HEADER + r.id_len + r.data_len
    if pread(fd, foot, C_FOOTER, foot_off) != C_FOOTER:
        return 0
    if memcmp(foot, C_FOOTER_MAGIC, 4) != 0 or _get32(foot + 4) != r.crc:
        return 0
    r.off = off
    return size


cdef int64_t _resync(int fd, int64_t off, int64_t end, uint8_t* block) noexcept nogil:
    """Offset of the next well-framed record at or after `off` (8-byte aligned), or -1."""
    cdef Rec r
    cdef ssize_t got
    cdef int64_t want, pos
    while off < end:
        want = RESYNC_BLOCK
        if end - off < want:
            want = end - off
        got = pread(fd, block, want, off)
        if got <= 0:
            return -1
        pos = 0
        while pos + 4 <= got:
            if memcmp(block + pos, C_MAGIC, 4) == 0 and _check_at(fd, off + pos, end, &r):
                return off + pos
            pos += 8
        off += got
    return -1


def scan(int fd, int64_t start, int64_t end):
    """Walk the records of a superblock file between `start` and `end` (file offsets).

    Checks framing only (magic, header crc, footer), not the data checksum. Returns
    (records, damaged, last_end): records as (offset, flags, algo, seq, data_len, sha256,
    checksum, chunk_id); damaged as (start, end) ranges skipped to the next well-framed
    record (a range ending at `end` is a torn tail); last_end just past the last good record.
    The file is read with the GIL released.
    """
    cdef Rec* recs = NULL
    cdef int64_t* bad = NULL
    cdef size_t nrec = 0, cap = 0, nbad = 0, badcap = 0
    cdef int64_t off = start, last_end = start, size, nxt
    cdef size_t i
    cdef uint8_t* block = <uint8_t*>malloc(RESYNC_BLOCK)
    cdef void* grown
    cdef int oom = 0
    if block == NULL:
        raise MemoryError()
    try:
        with nogil:
            while off < end:
                if nrec == cap:
                    cap = cap * 2 if cap else 256
                    grown = realloc(recs, cap * sizeof(Rec))
                    if grown == NULL:
                        oom = 1
                        break
                    recs = <Rec*>grown
                size = _check_at(fd, off, end, &recs[nrec])
                if size:
                    nrec += 1
                    off += size
                    last_end = off
                    continue
                if nbad == badcap:
                    badcap = badcap * 2 if badcap else 16
                    grown = realloc(bad, badcap * 2 * sizeof(int64_t))
                    if grown == NULL:
                        oom = 1
                        break
                    bad = <int64_t*>grown
                nxt = _resync(fd, off + 8, end, block)
                bad[2 * nbad] = off
                bad[2 * nbad + 1] = end if nxt < 0 else nxt
                nbad += 1
                if nxt < 0:
                    break
                off = nxt
        if oom:
            raise MemoryError()
        records = []
        for i in range(nrec):
            records.append(_rec_tuple(&recs[i])[:8])
        damaged = []
        for i in range(nbad):
            damaged.append((bad[2 * i], bad[2 * i + 1]))
        return records, damaged, last_end
    finally:
        free(block)
        free(recs)
        free(bad)


# ---------------------------------------------------------------- index log

def pack_index_entry(int kind, bytes chunk_id, uint32_t sb_id, uint64_t rec_off, uint32_t data_len=0,
                     uint64_t seq=0, bytes sha256=_ZERO32, bytes checksum=_ZERO32, int algo=0):
    """One crc-protected entry of the append-only index log."""
    cdef Py_ssize_t id_len = len(chunk_id)
    cdef uint8_t buf[C_IDX_ENTRY + C_MAX_ID + 8]
    cdef int64_t size
    if kind < 1 or kind > 4:
        raise ValueError("unknown index entry kind")
    if id_len > C_MAX_ID or ((kind == 1 or kind == 2) and id_len == 0):
        raise ValueError("bad chunk id length")
    if len(sha256) != 32 or len(checksum) != 32:
        raise ValueError("sha256 and checksum must be 32 bytes")
    size = _align(C_IDX_ENTRY + id_len)
    memset(buf, 0, size)
    buf[4] = kind
    buf[5] = <uint8_t>id_len
    buf[6] = <uint8_t>algo
    _put32(buf + 8, sb_id)
    _put64(buf + 12, rec_off)
    _put32(buf + 20, data_len)
    _put64(buf + 24, seq)
    memcpy(buf + 32, <const char*>sha256, 32)
    memcpy(buf + 64, <const char*>checksum, 32)
    if id_len:
        memcpy(buf + C_IDX_ENTRY, <const char*>chunk_id, id_len)
    _put32(buf, _crc(0, buf + 4, size - 4))
    return (<char*>buf)[:size]


class IndexState:
    """The index a replay builds; shared by load_index and the store's recovery scan."""

    __slots__ = ("live", "max_seq", "retired", "tombs", "water")

    def __init__(self):
        self.live = {}
        self.tombs = {}
        self.water = {}
        self.retired = set()
        self.max_seq = 0


cpdef void apply_entry(object state, int kind, str chunk_id, uint32_t sb_id, int64_t rec_off, int64_t data_len,
                       uint64_t seq, bytes sha256, bytes checksum, int algo) except *:
    """Apply one index operation: the record with the highest seq wins; equal seq relocates.

    live[id] = (sb, rec_off, data_off, data_len, seq, sha256, checksum, algo);
    tombs[id] = (sb, rec_off, seq); water[sb] = end of the furthest record known in sb.
    """
    cdef dict live = state.live
    cdef dict tombs = state.tombs
    cdef dict water = state.water
    cdef int64_t end
    cdef Py_ssize_t id_len = len(chunk_id)
    cdef tuple cur, tomb
    if kind == 3:
        state.retired.add(sb_id)
        water.pop(sb_id, None)
        for table in (live, tombs):
            for key in [k for k, v in (<dict>table).items() if v[0] == sb_id]:
                del (<dict>table)[key]
        return
    if kind == 4:
        end = rec_off
    else:
        end = rec_off + _align(C_HEADER + id_len + data_len + C_FOOTER)
    if end > <int64_t>water.get(sb_id, 0):
        water[sb_id] = end
    if kind == 4:
        return
    if seq > <uint64_t>state.max_seq:
        state.max_seq = seq
    cur = live.get(chunk_id)
    tomb = tombs.get(chunk_id)
    if kind == 1:
        if (cur is not None and <uint64_t>cur[4] > seq) or (tomb is not None and <uint64_t>tomb[2] >= seq):
            return
        live[chunk_id] = (sb_id, rec_off, rec_off + C_HEADER + id_len, data_len, seq, sha256, checksum, algo)
        if tomb is not None:
            del tombs[chunk_id]
    else:
        if (cur is not None and <uint64_t>cur[4] > seq) or (tomb is not None and <uint64_t>tomb[2] > seq):
            return
        if cur is not None:
            del live[chunk_id]
        tombs[chunk_id] = (sb_id, rec_off, seq)


def load_index(buf):
    """Replay an index log. Returns (state, valid_len): valid_len is where the log stops being
    well-formed (a torn or damaged entry); everything from there on is to be truncated.

    Entries are framed and crc-checked with the GIL released, then applied.
    """
    state = IndexState()
    cdef const uint8_t[::1] view
    cdef const uint8_t* p
    cdef Py_ssize_t n
    cdef int64_t off = C_IDX_HEADER, size, count = 0, cap = 0, i, e
    cdef int64_t* offs = NULL
    cdef void* grown
    cdef uint8_t kind, id_len
    cdef int oom = 0
    if len(buf) == 0:
        return state, 0
    view = memoryview(buf).cast("B")
    n = view.shape[0]
    if n < C_IDX_HEADER or memcmp(&view[0], <const char*>b"SHIX\x01\x00\x00\x00", 8) != 0:
        return state, 0
    p = &view[0]
    try:
        with nogil:
            while off + C_IDX_ENTRY <= n:
                kind = p[off + 4]
                id_len = p[off + 5]
                if kind < 1 or kind > 4 or id_len > C_MAX_ID or ((kind == 1 or kind == 2) and id_len == 0):
                    break
                size = _align(C_IDX_ENTRY + id_len)
                if off + size > n or _crc(0, p + off + 4, size - 4) != _get32(p + off):
                    break
                if count == cap:
                    cap = cap * 2 if cap else 1024
                    grown = realloc(offs, cap * sizeof(int64_t))
                    if grown == NULL:
                        oom = 1
                        break
                    offs = <int64_t*>grown
                offs[count] = off
                count += 1
                off += size
        if oom:
            raise MemoryError()
        for i in range(count):
            e = offs[i]
            apply_entry(
                state,
                p[e + 4],
                (<const char*>p + e + C_IDX_ENTRY)[:p[e + 5]].decode("latin-1"),
                _get32(p + e + 8),
                <int64_t>_get64(p + e + 12),
                _get32(p + e + 20),
                _get64(p + e + 24),
                (<const char*>p + e + 32)[:32],
                (<const char*>p + e + 64)[:32],
                p[e + 6],
            )
        return state, off
    finally:
        free(offs)


# ---------------------------------------------------------------- the compact chunk index
# Same structure and bytes as the twin (layout documented there): 32-byte slots, linear
# probing from a fastrange home, backward-shift deletion, growth by a tenth at 90% full.
# The buffer comes from PyMem_RawCalloc, so tracemalloc sees it.

cdef extern from "shoal_xxh.h" nogil:
    uint64_t shoal_xxh3(const void *p, size_t n)

cdef extern from *:
    ctypedef unsigned long long u128 "unsigned __int128"

cdef struct Slot:
    uint64_t w0
    uint64_t w1
    uint64_t w2
    uint64_t w3

SLOT_SIZE = 32
TIME_EPOCH = 1704067200
TIME_UNITS = 1024
MAX_SEQ = (1 << 48) - 1
INDEX_MAGIC_V2 = b"SHIX\x02\x00\x00\x00"
SNAPSHOT_HEADER_SIZE = 64
_SNAP = _struct.Struct("<IIQQQII")
_WATER = _struct.Struct("<QQ")
_IDXHEAD = _struct.Struct("<IBBBBIQIQ")

cdef uint64_t C_MAX_SEQ = (<uint64_t>1 << 48) - 1
cdef uint64_t C_M33 = (<uint64_t>1 << 33) - 1


def chunk_key(bytes chunk_id):
    """The 64-bit table key of a chunk id (XXH3-64; never 0, which marks an empty slot)."""
    cdef uint64_t k = shoal_xxh3(<const char*>chunk_id, len(chunk_id))
    return k if k else 1


cdef inline size_t _home(uint64_t key, size_t cap) noexcept nogil:
    return <size_t>((<u128>key * <u128>cap) >> 64)


cdef int _pack_slot(Slot* s, uint64_t key, int64_t sb_id, int64_t rec_off, int64_t id_len, int64_t data_len,
                    int64_t seq, int64_t flags, int64_t t) except -1:
    if id_len < 1 or id_len > C_MAX_ID or data_len < 0 or data_len > C_MAX_DATA or seq < 0 or <uint64_t>seq > C_MAX_SEQ:
        raise ValueError("index entry out of range")
    if (rec_off & 7) or rec_off < 0 or (rec_off >> 3) >= (<int64_t>1 << 32) or sb_id < 0 or sb_id >= (<int64_t>1 << 32) \
            or (flags != 1 and flags != 2):
        raise ValueError("index entry out of range")
    if t < 0 or t >= (<int64_t>1 << 40):
        raise ValueError("stored time out of range")
    s.w0 = key
    s.w1 = <uint64_t>seq | (<uint64_t>(id_len - 1) << 48) | (<uint64_t>flags << 55) | ((<uint64_t>t >> 33) << 57)
    s.w2 = <uint64_t>sb_id | ((<uint64_t>rec_off >> 3) << 32)
    s.w3 = <uint64_t>data_len | ((<uint64_t>t & C_M33) << 31)
    return 0


cdef inline int _flags_of(const Slot* s) noexcept nogil:
    return (s.w1 >> 55) & 3


cdef tuple _entry(const Slot* s):
    return (
        <uint32_t>s.w2,
        (s.w2 >> 32) << 3,
        ((s.w1 >> 48) & 0x7F) + 1,
        s.w3 & 0x7FFFFFFF,
        s.w1 & C_MAX_SEQ,
        (s.w1 >> 55) & 3,
        ((s.w1 >> 57) << 33) | (s.w3 >> 31),
    )


cdef class ChunkIndex:
    """Chunk locations in one contiguous buffer: 32 bytes a slot, at most 90% full.

    Entries are (sb, rec_off, id_len, data_len, seq, flags, time); select() adds the key first.
    Grows by a tenth (not doubling) so the bytes per chunk stay within 32/0.9 .. 32/0.82.
    """

    cdef Slot* slots
    cdef size_t cap
    cdef size_t count
    cdef size_t live

    def __cinit__(self, size_t capacity=0):
        self.cap = capacity
        self.count = 0
        self.live = 0
        self.slots = NULL
        if capacity:
            self.slots = <Slot*>PyMem_RawCalloc(capacity, sizeof(Slot))
            if self.slots == NULL:
                raise MemoryError()

    def __dealloc__(self):
        PyMem_RawFree(self.slots)

    def __len__(self):
        return self.count

    @property
    def capacity(self):
        return self.cap

    @property
    def live_count(self):
        return self.live

    @property
    def nbytes(self):
        return self.cap * sizeof(Slot)

    cdef void _put_raw(self, const Slot* w) noexcept nogil:
        cdef size_t i = _home(w.w0, self.cap)
        while self.slots[i].w0:
            i += 1
            if i == self.cap:
                i = 0
        self.slots[i] = w[0]

    cdef int _grow(self) except -1:
        cdef Slot* old = self.slots
        cdef size_t old_cap = self.cap, i
        cdef size_t new_cap = old_cap + old_cap // 10 + 64
        cdef Slot* fresh = <Slot*>PyMem_RawCalloc(new_cap, sizeof(Slot))
        if fresh == NULL:
            raise MemoryError()
        self.slots = fresh
        self.cap = new_cap
        for i in range(old_cap):  # with the GIL held: readers on other threads never see it half-built
            if old[i].w0:
                self._put_raw(&old[i])
        PyMem_RawFree(old)
        return 0

    cdef void _delete_at(self, size_t i) noexcept nogil:
        cdef size_t j = i, k
        while True:
            j += 1
            if j == self.cap:
                j = 0
            if not self.slots[j].w0:
                break
            k = _home(self.slots[j].w0, self.cap)
            if (i < k and k <= j) if i <= j else (i < k or k <= j):
                continue
            self.slots[i] = self.slots[j]
            i = j
        memset(&self.slots[i], 0, sizeof(Slot))

    cdef Py_ssize_t _find(self, uint64_t key, uint64_t w2) noexcept nogil:
        cdef size_t i
        if not self.cap:
            return -1
        i = _home(key, self.cap)
        while self.slots[i].w0:
            if self.slots[i].w0 == key and self.slots[i].w2 == w2:
                return i
            i += 1
            if i == self.cap:
                i = 0
        return -1

    def get(self, uint64_t key):
        """Every entry under `key` (usually 0 or 1; more only on a hash collision)."""
        cdef list out = []
        cdef size_t i
        if not self.cap:
            return out
        i = _home(key, self.cap)
        while self.slots[i].w0:
            if self.slots[i].w0 == key:
                out.append(_entry(&self.slots[i]))
            i += 1
            if i == self.cap:
                i = 0
        return out

    def insert(self, uint64_t key, int64_t sb_id, int64_t rec_off, int64_t id_len, int64_t data_len, int64_t seq,
               int64_t flags, int64_t t=0):
        """Add an entry (another one under the same key is kept: a different chunk id)."""
        cdef Slot w
        _pack_slot(&w, key, sb_id, rec_off, id_len, data_len, seq, flags, t)
        if (self.count + 1) * 10 > self.cap * 9:
            self._grow()
        self._put_raw(&w)
        self.count += 1
        if flags == 1:
            self.live += 1

    def replace(self, uint64_t key, int64_t old_sb, int64_t old_off, int64_t sb_id, int64_t rec_off, int64_t id_len,
                int64_t data_len, int64_t seq, int64_t flags, int64_t t=0):
        """Overwrite the entry under `key` that is at (old_sb, old_off); False if there is none."""
        cdef Slot w
        _pack_slot(&w, key, sb_id, rec_off, id_len, data_len, seq, flags, t)
        cdef Py_ssize_t i = self._find(key, <uint64_t>old_sb | ((<uint64_t>old_off >> 3) << 32))
        if i < 0:
            return False
        if _flags_of(&self.slots[i]) == 1:
            self.live -= 1
        if flags == 1:
            self.live += 1
        self.slots[i] = w
        return True

    def remove(self, uint64_t key, int64_t sb_id, int64_t rec_off):
        cdef Py_ssize_t i = self._find(key, <uint64_t>sb_id | ((<uint64_t>rec_off >> 3) << 32))
        if i < 0:
            return False
        if _flags_of(&self.slots[i]) == 1:
            self.live -= 1
        self.count -= 1
        self._delete_at(i)
        return True

    def drop_superblock(self, int64_t sb_id):
        """Remove every entry in superblock `sb_id` (retired); the table is rebuilt in place."""
        cdef Slot* old = self.slots
        cdef size_t i, dropped = 0
        if not self.cap:
            return 0
        cdef Slot* fresh = <Slot*>PyMem_RawCalloc(self.cap, sizeof(Slot))
        if fresh == NULL:
            raise MemoryError()
        self.slots = fresh
        for i in range(self.cap):  # GIL held, as in _grow
            if not old[i].w0:
                continue
            if <int64_t>(<uint32_t>old[i].w2) == sb_id:
                dropped += 1
                self.count -= 1
                if _flags_of(&old[i]) == 1:
                    self.live -= 1
            else:
                self._put_raw(&old[i])
        PyMem_RawFree(old)
        return dropped

    def select(self, int64_t sb_id=-1, int flags=3):
        """(key, sb, rec_off, id_len, data_len, seq, flags, time) of the entries in `sb_id`
        (every superblock when -1) whose flags are in the mask `flags`, in slot order."""
        cdef list out = []
        cdef size_t i
        for i in range(self.cap):
            if not self.slots[i].w0 or not (_flags_of(&self.slots[i]) & flags):
                continue
            if sb_id >= 0 and <int64_t>(<uint32_t>self.slots[i].w2) != sb_id:
                continue
            out.append((self.slots[i].w0,) + _entry(&self.slots[i]))
        return out

    def usage(self):
        """{sb: [live records, tombstones, bytes their records take]}."""
        cdef dict out = {}
        cdef size_t i
        cdef uint64_t sb_id, id_len, data_len
        cdef list u
        for i in range(self.cap):
            if not self.slots[i].w0:
                continue
            sb_id = <uint32_t>self.slots[i].w2
            u = out.get(sb_id)
            if u is None:
                u = [0, 0, 0]
                out[sb_id] = u
            u[0 if _flags_of(&self.slots[i]) == 1 else 1] += 1
            id_len = ((self.slots[i].w1 >> 48) & 0x7F) + 1
            data_len = self.slots[i].w3 & 0x7FFFFFFF
            u[2] += _align(C_HEADER + id_len + data_len + C_FOOTER)
        return out

    def dump(self):
        """The slots as they are in memory (what a snapshot stores; x86-64 is little-endian)."""
        if not self.cap:
            return b""
        return (<char*>self.slots)[:self.cap * sizeof(Slot)]

    def crc32c(self, unsigned int value=0):
        """CRC-32C of the slots, continuing from `value` (a snapshot's body check)."""
        if not self.cap:
            return value
        return _crc32c_lib(<uint8_t[:self.cap * sizeof(Slot)]><uint8_t*>self.slots, value)

    cdef int _recount(self) except -1:
        cdef size_t i
        self.count = 0
        self.live = 0
        for i in range(self.cap):
            if self.slots[i].w0:
                self.count += 1
                if _flags_of(&self.slots[i]) == 1:
                    self.live += 1
        if self.count * 10 > self.cap * 9 + 9:
            raise ValueError("table dump is over-full")
        return 0

    @classmethod
    def load(cls, buf):
        """A table from dump() bytes, as they are (one copy, no re-insert)."""
        cdef const uint8_t[::1] view = memoryview(buf).cast("B")
        cdef size_t n = view.shape[0]
        if n % sizeof(Slot):
            raise ValueError("a table dump is a whole number of slots")
        cdef ChunkIndex t = cls(n // sizeof(Slot))
        if n:
            memcpy(t.slots, &view[0], n)
        t._recount()
        return t

    @classmethod
    def read_fd(cls, int fd, int64_t offset, size_t capacity):
        """A table whose slots are read straight from a snapshot file: one read, no re-insert."""
        cdef ChunkIndex t = cls(capacity)
        cdef size_t want = capacity * sizeof(Slot), done = 0
        cdef ssize_t got = 0
        with nogil:
            while done < want:
                got = pread(fd, <char*>t.slots + done, want - done, offset + done)
                if got <= 0:
                    break
                done += got
        if done != want:
            raise ValueError("short table snapshot")
        t._recount()
        return t


class TableState:
    """What a replay into the compact table builds (the table twin of IndexState)."""

    __slots__ = ("max_seq", "resolve", "retired", "table", "water")

    def __init__(self, table=None, resolve=None):
        self.table = table if table is not None else ChunkIndex()
        self.water = {}
        self.retired = set()
        self.max_seq = 0
        self.resolve = resolve


def find_entry(state, uint64_t key, str chunk_id):
    """The entry of `chunk_id` among those under its key (ids confirmed through state.resolve)."""
    cdef Py_ssize_t n = len(chunk_id)
    resolve = state.resolve
    for e in (<ChunkIndex>state.table).get(key):
        if e[2] != n:
            continue
        if resolve is None:
            return e
        found = resolve(e[0], e[1], e[2])
        if found is None or found == chunk_id:
            return e
    return None


cpdef void apply_table_entry(object state, int kind, str chunk_id, uint32_t sb_id, int64_t rec_off, int64_t data_len,
                             uint64_t seq, int64_t t=0) except *:
    """apply_entry on the compact table: the record with the highest seq wins; equal seq relocates."""
    cdef ChunkIndex table = state.table
    cdef dict water = state.water
    cdef int64_t end
    cdef Py_ssize_t id_len = len(chunk_id)
    cdef uint64_t cseq, key
    cdef int cflags, flags
    if kind == 3:
        state.retired.add(sb_id)
        water.pop(sb_id, None)
        table.drop_superblock(sb_id)
        return
    if kind == 4:
        end = rec_off
    else:
        end = rec_off + _align(C_HEADER + id_len + data_len + C_FOOTER)
    if end > <int64_t>water.get(sb_id, 0):
        water[sb_id] = end
    if kind == 4:
        return
    if seq > <uint64_t>state.max_seq:
        state.max_seq = seq
    cdef bytes raw = chunk_id.encode("latin-1")
    key = shoal_xxh3(<const char*>raw, len(raw))
    if key == 0:
        key = 1
    cur = find_entry(state, key, chunk_id)
    flags = 1 if kind == 1 else 2
    if flags == 2:
        data_len = 0
    if cur is not None:
        cseq = cur[4]
        cflags = cur[5]
        if cflags == 1 and cseq > seq:
            return
        if cflags == 2 and (cseq > seq or (cseq == seq and kind == 1)):
            return
        table.replace(key, cur[0], cur[1], sb_id, rec_off, id_len, data_len, seq, flags, t)
    else:
        table.insert(key, sb_id, rec_off, id_len, data_len, seq, flags, t)


def pack_snapshot(ChunkIndex table, dict water, uint64_t max_seq):
    """The parts of a v2 index file: magic, snapshot header, watermarks, the table's slots.

    Entries appended after it (pack_index_entry) are replayed on top when it is loaded.
    """
    body = table.dump()
    marks = b"".join([_WATER.pack(k, v) for k, v in sorted(water.items())])
    body_crc = _crc32c_lib(body, _crc32c_lib(marks))
    head = _SNAP.pack(0, 32, table.capacity, len(table), max_seq, len(water), body_crc)
    head += bytes(64 - len(head))
    head = _struct.pack("<I", _crc32c_lib(head[4:])) + head[4:]
    return [INDEX_MAGIC_V2, head, marks, body]


def replay_entries(state, buf, int64_t off):
    """Apply the v1 entries of `buf` from `off` on; the offset where they stop being well-formed."""
    cdef const uint8_t[::1] view = memoryview(buf).cast("B")
    cdef Py_ssize_t n = view.shape[0]
    cdef const uint8_t* p
    cdef int64_t size
    cdef uint8_t kind, id_len
    if n == 0:
        return off
    p = &view[0]
    while off + C_IDX_ENTRY <= n:
        kind = p[off + 4]
        id_len = p[off + 5]
        if kind < 1 or kind > 4 or id_len > C_MAX_ID or ((kind == 1 or kind == 2) and id_len == 0):
            break
        size = _align(C_IDX_ENTRY + id_len)
        if off + size > n or _crc(0, p + off + 4, size - 4) != _get32(p + off):
            break
        apply_table_entry(
            state,
            kind,
            (<const char*>p + off + C_IDX_ENTRY)[:id_len].decode("latin-1"),
            _get32(p + off + 8),
            <int64_t>_get64(p + off + 12),
            _get32(p + off + 20),
            _get64(p + off + 24),
            0,
        )
        off += size
    return off


def load_table_index(buf, resolve=None):
    """Load an index file into the compact table: (state, valid_len), as load_index.

    A v2 file's snapshot is taken as it is (its slots are the table); the entries after it,
    and every entry of a v1 log, are replayed. A damaged snapshot gives valid_len 8 (only the magic holds: a full scan rebuilds).
    Replayed entries get stored time 0 (unknown): only a snapshot carries stored times.
    """
    mv = memoryview(buf).cast("B")
    state = TableState(resolve=resolve)
    if len(mv) < 8:
        return state, 0
    magic = bytes(mv[:8])
    if magic == INDEX_MAGIC:
        return state, replay_entries(state, mv, 8)
    if magic != INDEX_MAGIC_V2 or len(mv) < 8 + 64:
        return state, 0
    off = 8
    head = mv[off : off + 64]
    crc, slot, cap, count, max_seq, n_water, body_crc = _SNAP.unpack_from(head, 0)
    if crc != _crc32c_lib(head[4:]) or slot != 32:
        return state, 8
    off += 64
    end = off + n_water * 16 + cap * 32
    if end > len(mv):
        return state, 8
    marks = mv[off : off + n_water * 16]
    body = mv[off + n_water * 16 : end]
    if _crc32c_lib(body, _crc32c_lib(marks)) != body_crc:
        return state, 8
    try:
        state.table = ChunkIndex.load(body)
    except ValueError:
        return state, 8
    if len(state.table) != count:
        return TableState(resolve=resolve), 8
    for i in range(n_water):
        sb_id, w = _WATER.unpack_from(marks, i * 16)
        state.water[sb_id] = w
    state.max_seq = max_seq
    return state, replay_entries(state, mv, end)
