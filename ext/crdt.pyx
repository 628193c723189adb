# cython: language_level=3
# distutils: sources = ext/blake3/blake3.c ext/blake3/blake3_dispatch.c ext/blake3/blake3_portable.c ext/blake3/blake3_sse41_target.c
# distutils: include_dirs = ext/blake3
# distutils: define_macros = BLAKE3_NO_SSE2=1 BLAKE3_NO_AVX2=1 BLAKE3_NO_AVX512=1
"""CRDT hot paths: canonical op encoding and decoding, BLAKE3 ids, batch ordering, register merge,
Bloom filters. Twin: shoal/_pure/crdt.py (same API and results; its docstring has the format).

BLAKE3 is the official C implementation (ext/blake3/, portable build), called without the GIL
for a whole batch of frames.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memset

import math
import os


cdef extern from "blake3.h":
    ctypedef struct blake3_hasher:
        pass
    void blake3_hasher_init(blake3_hasher *self) nogil
    void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len) nogil
    void blake3_hasher_finalize(const blake3_hasher *self, uint8_t *out, size_t out_len) nogil


cdef extern from "blake3_impl.h":
    void blake3_compress_in_place(uint32_t cv[8], const uint8_t *block, uint8_t block_len, uint64_t counter,
                                  uint8_t flags) nogil
    void blake3_hash_many(const uint8_t *const *inputs, size_t num_inputs, size_t blocks, const uint32_t *key,
                          uint64_t counter, bint increment_counter, uint8_t flags, uint8_t flags_start,
                          uint8_t flags_end, uint8_t *out) nogil
    uint32_t load32(const void *src) nogil
    void store_cv_words(uint8_t *bytes_out, uint32_t *cv_words) nogil


MAGIC = b"SOP1"
ID_LEN = 32
SIG_LEN = 64
AUTHOR_LEN = 32
MAX_DEPS = 256
MAX_KIND = 32
MAX_KEY = 255
MAX_ACTOR = 255
MAX_VALUE = 1 << 16
cdef enum:
    HEAD_LEN = 46  # magic 4 + author 32 + hlc 8 + ndeps 2
    C_SIG = 64
    C_MAX_DEPS = 256
    C_MAX_KIND = 32
    C_MAX_KEY = 255
    C_MAX_VALUE = 65536


class MalformedOp(ValueError):
    """An encoding that is not a canonical operation (the reason is the message)."""


@cython.no_gc
cdef class Op:
    """A decoded operation. `id` is the BLAKE3 hash of `blob`; `value` None is a tombstone."""

    cdef readonly bytes id, author, sig, blob
    cdef readonly object value
    cdef readonly unsigned long long hlc
    cdef readonly tuple deps
    cdef readonly str kind, key, actor

    def __init__(self, bytes id, bytes author, unsigned long long hlc, tuple deps, str kind, str key,
                 str actor, value, bytes sig, bytes blob):
        self.id = id
        self.author = author
        self.hlc = hlc
        self.deps = deps
        self.kind = kind
        self.key = key
        self.actor = actor
        self.value = value
        self.sig = sig
        self.blob = blob

    def astuple(self):
        return (self.id, self.author, self.hlc, self.deps, self.kind, self.key, self.actor, self.value,
                self.sig, self.blob)

    def __repr__(self):
        return f"Op({self.id.hex()[:12]} {self.kind}/{self.key} hlc={self.hlc} deps={len(self.deps)})"


cdef inline void _hash(const uint8_t *data, size_t n, uint8_t *out) noexcept nogil:
    cdef blake3_hasher h
    blake3_hasher_init(&h)
    blake3_hasher_update(&h, data, n)
    blake3_hasher_finalize(&h, out, 32)


def digest(data):
    """BLAKE3-256 of `data`."""
    cdef const uint8_t[:] view = data
    cdef uint8_t out[32]
    cdef size_t n = view.shape[0]
    cdef const uint8_t *p = &view[0] if n else <const uint8_t *> b""
    with nogil:
        _hash(p, n, out)
    return PyBytes_FromStringAndSize(<char *> out, 32)


# Batch hashing: a message of one chunk (<= 1024 bytes) is k full blocks and a final block. The
# k full blocks of up to 16 messages with the same k go through blake3_hash_many (SIMD lanes
# across messages); the final block is one compression flagged CHUNK_END | ROOT. Same digests
# as blake3 (tests check against the blake3 package).
cdef uint32_t _IV[8]
_IV[:] = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
cdef enum:
    F_CHUNK_START = 1
    F_CHUNK_END = 2
    F_ROOT = 8
    LANES = 16


cdef inline void _final_block(uint32_t *cv, const uint8_t *p, Py_ssize_t n, uint8_t flags, uint8_t *out) noexcept nogil:
    cdef uint8_t block[64]
    memset(block, 0, 64)
    memcpy(block, p, n)
    blake3_compress_in_place(cv, block, <uint8_t> n, 0, flags | F_CHUNK_END | F_ROOT)
    store_cv_words(out, cv)


cdef void _flush(const uint8_t **inputs, Py_ssize_t *lens, uint8_t **outs, int count, Py_ssize_t k) noexcept nogil:
    cdef uint8_t cvs[LANES * 32]
    cdef uint32_t cv[8]
    cdef int j, w
    blake3_hash_many(inputs, count, k, _IV, 0, False, 0, F_CHUNK_START, 0, cvs)
    for j in range(count):
        for w in range(8):
            cv[w] = load32(cvs + j * 32 + w * 4)
        _final_block(cv, inputs[j] + k * 64, lens[j] - k * 64, 0, outs[j])


cdef void _hash_batch(const uint8_t **ptrs, Py_ssize_t *lens, int *skip, Py_ssize_t n, Py_ssize_t offset,
                      uint8_t *ids) noexcept nogil:
    """ids[i] = BLAKE3(ptrs[i][offset:lens[i]]) for every i with skip[i] == 0."""
    cdef const uint8_t *inputs[16][LANES]
    cdef Py_ssize_t glens[16][LANES]
    cdef uint8_t *outs[16][LANES]
    cdef int count[16]
    cdef uint32_t cv[8]
    cdef Py_ssize_t i, L, k
    cdef const uint8_t *p
    memset(count, 0, sizeof(count))
    for i in range(n):
        if skip[i]:
            continue
        p = ptrs[i] + offset
        L = lens[i] - offset
        if L <= 0 or L > 1024:
            _hash(p, L, ids + i * 32)
            continue
        k = (L - 1) >> 6
        if k == 0:
            memcpy(cv, _IV, 32)
            _final_block(cv, p, L, F_CHUNK_START, ids + i * 32)
            continue
        inputs[k][count[k]] = p
        glens[k][count[k]] = L
        outs[k][count[k]] = ids + i * 32
        count[k] += 1
        if count[k] == LANES:
            _flush(inputs[k], glens[k], outs[k], LANES, k)
            count[k] = 0
    for k in range(1, 16):
        if count[k]:
            _flush(inputs[k], glens[k], outs[k], count[k], k)


def digest_many(frames, Py_ssize_t offset=0):
    """BLAKE3-256 of frame[offset:] for each frame (one call, without the GIL)."""
    cdef list items = [f if type(f) is bytes else bytes(f) for f in frames]
    cdef Py_ssize_t n = len(items), i
    if n == 0:
        return []
    cdef const uint8_t **ptrs = <const uint8_t **> malloc(n * sizeof(uint8_t *))
    cdef Py_ssize_t *lens = <Py_ssize_t *> malloc(n * sizeof(Py_ssize_t))
    cdef int *skip = <int *> calloc(n, sizeof(int))
    cdef uint8_t *ids = <uint8_t *> malloc(n * 32)
    try:
        if not (ptrs and lens and skip and ids):
            raise MemoryError()
        for i in range(n):
            ptrs[i] = <const uint8_t *> PyBytes_AS_STRING(<bytes> items[i])
            lens[i] = PyBytes_GET_SIZE(<bytes> items[i])
            if lens[i] < offset:
                raise ValueError("frame shorter than offset")
        with nogil:
            _hash_batch(ptrs, lens, skip, n, offset, ids)
        return [PyBytes_FromStringAndSize(<char *> (ids + i * 32), 32) for i in range(n)]
    finally:
        free(ptrs); free(lens); free(skip); free(ids)


cdef inline uint64_t _u64(const uint8_t *p) noexcept nogil:
    return ((<uint64_t> p[0]) << 56 | (<uint64_t> p[1]) << 48 | (<uint64_t> p[2]) << 40
            | (<uint64_t> p[3]) << 32 | (<uint64_t> p[4]) << 24 | (<uint64_t> p[5]) << 16
            | (<uint64_t> p[6]) << 8 | <uint64_t> p[7])


cdef inline uint64_t _u64le(const uint8_t *p) noexcept nogil:
    return ((<uint64_t> p[7]) << 56 | (<uint64_t> p[6]) << 48 | (<uint64_t> p[5]) << 40
            | (<uint64_t> p[4]) << 32 | (<uint64_t> p[3]) << 24 | (<uint64_t> p[2]) << 16
            | (<uint64_t> p[1]) << 8 | <uint64_t> p[0])


cdef inline bint _kind_char(uint8_t c) noexcept nogil:
    return (97 <= c <= 122) or (48 <= c <= 57) or c == 95


cdef tuple _deps(const uint8_t *p, Py_ssize_t n):
    return tuple([PyBytes_FromStringAndSize(<const char *> (p + i * 32), 32) for i in range(n)])


cdef struct Parsed:
    uint64_t hlc
    const uint8_t *deps
    Py_ssize_t ndeps, kind_off, kind_len, key_off, key_len, actor_off, actor_len, value_off, value_len
    int has_value


cdef enum:
    E_OK = 0
    E_TRUNCATED = 1
    E_MAGIC = 2
    E_TOO_MANY_DEPS = 3
    E_UNSORTED = 4
    E_KIND = 5
    E_KEY = 6
    E_ACTOR = 7
    E_VALUE_SIZE = 8
    E_FLAG = 9
    E_TRAILING = 10

_REASONS = ("", "truncated", "bad magic", "too many deps", "deps not sorted", "bad kind", "bad key",
            "bad actor", "value too large", "bad value flag", "trailing bytes")


cdef bint _utf8_ok(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8 exactly as Python's decoder judges it (no overlongs, surrogates, > U+10FFFF)."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, c1
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
        elif c < 0xC2:
            return False
        elif c < 0xE0:
            if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif c < 0xF0:
            if i + 2 >= n:
                return False
            c1 = p[i + 1]
            if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80:
                return False
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):
                return False
            i += 3
        elif c < 0xF5:
            if i + 3 >= n:
                return False
            c1 = p[i + 1]
            if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80 or (p[i + 3] & 0xC0) != 0x80:
                return False
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):
                return False
            i += 4
        else:
            return False
    return True


cdef int _scan(const uint8_t *b, Py_ssize_t n, Parsed *out) noexcept nogil:
    """Check a blob is a canonical operation and find its fields (E_OK), or say why not.
    The checks and their order are the twin's decode, so both give the same reason."""
    cdef Py_ssize_t pos, i, klen, keylen, alen, vlen, ndeps
    if n < HEAD_LEN:
        return E_TRUNCATED
    if memcmp(b, b"SOP1", 4) != 0:
        return E_MAGIC
    ndeps = (<Py_ssize_t> b[44]) << 8 | b[45]
    if ndeps > C_MAX_DEPS:
        return E_TOO_MANY_DEPS
    pos = HEAD_LEN
    if pos + ndeps * 32 + 1 > n:
        return E_TRUNCATED
    for i in range(1, ndeps):
        if memcmp(b + pos + (i - 1) * 32, b + pos + i * 32, 32) >= 0:
            return E_UNSORTED
    out.hlc = _u64(b + 36)
    out.deps = b + pos
    out.ndeps = ndeps
    pos += ndeps * 32
    klen = b[pos]
    pos += 1
    if klen == 0 or klen > C_MAX_KIND or pos + klen + 2 > n:
        return E_KIND
    for i in range(klen):
        if not _kind_char(b[pos + i]):
            return E_KIND
    out.kind_off = pos
    out.kind_len = klen
    pos += klen
    keylen = (<Py_ssize_t> b[pos]) << 8 | b[pos + 1]
    pos += 2
    if keylen == 0 or keylen > C_MAX_KEY or pos + keylen + 1 > n:
        return E_KEY
    if not _utf8_ok(b + pos, keylen):
        return E_KEY
    out.key_off = pos
    out.key_len = keylen
    pos += keylen
    alen = b[pos]
    pos += 1
    if pos + alen + 1 > n:
        return E_ACTOR
    if not _utf8_ok(b + pos, alen):
        return E_ACTOR
    out.actor_off = pos
    out.actor_len = alen
    pos += alen
    cdef uint8_t flag = b[pos]
    pos += 1
    out.has_value = 0
    out.value_off = 0
    out.value_len = 0
    if flag == 1:
        if pos + 4 > n:
            return E_TRUNCATED
        vlen = (<Py_ssize_t> b[pos]) << 24 | (<Py_ssize_t> b[pos + 1]) << 16 | (<Py_ssize_t> b[pos + 2]) << 8 | b[pos + 3]
        pos += 4
        if vlen > C_MAX_VALUE:
            return E_VALUE_SIZE
        if pos + vlen > n:
            return E_TRUNCATED
        out.has_value = 1
        out.value_off = pos
        out.value_len = vlen
        pos += vlen
    elif flag != 0:
        return E_FLAG
    if pos != n:
        return E_TRAILING
    return E_OK


cdef Op _decode(bytes blob, bytes sig, bytes op_id):
    cdef const uint8_t *b = <const uint8_t *> PyBytes_AS_STRING(blob)
    cdef Parsed p
    cdef int err = _scan(b, PyBytes_GET_SIZE(blob), &p)
    if err != E_OK:
        raise MalformedOp(_REASONS[err])
    cdef Op op = Op.__new__(Op)
    op.id = op_id
    op.author = PyBytes_FromStringAndSize(<const char *> (b + 4), 32)
    op.hlc = p.hlc
    op.deps = _deps(p.deps, p.ndeps)
    op.kind = PyUnicode_DecodeUTF8(<const char *> (b + p.kind_off), p.kind_len, "strict")
    op.key = PyUnicode_DecodeUTF8(<const char *> (b + p.key_off), p.key_len, "strict")
    op.actor = PyUnicode_DecodeUTF8(<const char *> (b + p.actor_off), p.actor_len, "strict")
    op.value = PyBytes_FromStringAndSize(<const char *> (b + p.value_off), p.value_len) if p.has_value else None
    op.sig = sig
    op.blob = blob
    return op


def decode(bytes blob, bytes sig=b"", op_id=None):
    """The operation encoded in `blob`; MalformedOp unless it is canonical."""
    if op_id is None:
        op_id = digest(blob)
    return _decode(blob, sig, op_id)


def encode(bytes author, hlc, deps, str kind, str key, str actor, value):
    """The canonical encoding (deps are sorted and de-duplicated here)."""
    cdef list ds = sorted(set(deps))
    if len(author) != AUTHOR_LEN:
        raise MalformedOp("author is 32 bytes")
    if not 0 <= hlc <= 0xFFFFFFFFFFFFFFFF:
        raise MalformedOp("hlc out of range")
    if len(ds) > MAX_DEPS:
        raise MalformedOp("too many deps")
    for d in ds:
        if len(d) != ID_LEN:
            raise MalformedOp("deps are 32 bytes")
    cdef bytes k = kind.encode()
    if not 0 < len(k) <= MAX_KIND or not all(_kind_char(c) for c in k):
        raise MalformedOp("bad kind")
    cdef bytes ky = key.encode()
    if not 0 < len(ky) <= MAX_KEY:
        raise MalformedOp("bad key")
    cdef bytes a = actor.encode()
    if len(a) > MAX_ACTOR:
        raise MalformedOp("bad actor")
    if value is not None:
        value = bytes(value)
        if len(value) > MAX_VALUE:
            raise MalformedOp("value too large")
    cdef Py_ssize_t total = HEAD_LEN + 32 * len(ds) + 1 + len(k) + 2 + len(ky) + 1 + len(a) + 1
    if value is not None:
        total += 4 + len(value)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t *o = <uint8_t *> PyBytes_AS_STRING(out)
    cdef uint64_t h = hlc
    cdef Py_ssize_t pos = 0, i, vlen
    memcpy(o, b"SOP1", 4)
    memcpy(o + 4, PyBytes_AS_STRING(author), 32)
    for i in range(8):
        o[36 + i] = (h >> (56 - 8 * i)) & 0xFF
    o[44] = (len(ds) >> 8) & 0xFF
    o[45] = len(ds) & 0xFF
    pos = HEAD_LEN
    for d in ds:
        memcpy(o + pos, PyBytes_AS_STRING(<bytes> d), 32)
        pos += 32
    o[pos] = len(k)
    memcpy(o + pos + 1, PyBytes_AS_STRING(k), len(k))
    pos += 1 + len(k)
    o[pos] = (len(ky) >> 8) & 0xFF
    o[pos + 1] = len(ky) & 0xFF
    memcpy(o + pos + 2, PyBytes_AS_STRING(ky), len(ky))
    pos += 2 + len(ky)
    o[pos] = len(a)
    memcpy(o + pos + 1, PyBytes_AS_STRING(a), len(a))
    pos += 1 + len(a)
    if value is None:
        o[pos] = 0
    else:
        vlen = len(value)
        o[pos] = 1
        o[pos + 1] = (vlen >> 24) & 0xFF
        o[pos + 2] = (vlen >> 16) & 0xFF
        o[pos + 3] = (vlen >> 8) & 0xFF
        o[pos + 4] = vlen & 0xFF
        memcpy(o + pos + 5, PyBytes_AS_STRING(<bytes> value), vlen)
    return out


def parse_frames(frames):
    """Decode signed frames (signature + blob): the operations, and (index, reason) of the bad ones."""
    cdef list items = [f if type(f) is bytes else bytes(f) for f in frames]
    cdef Py_ssize_t n = len(items), i
    cdef list ops = [], errors = []
    if n == 0:
        return ops, errors
    cdef uint8_t *ids = <uint8_t *> malloc(n * 32)
    cdef const uint8_t **ptrs = <const uint8_t **> malloc(n * sizeof(uint8_t *))
    cdef Py_ssize_t *lens = <Py_ssize_t *> malloc(n * sizeof(Py_ssize_t))
    if ids == NULL or ptrs == NULL or lens == NULL:
        free(ids); free(ptrs); free(lens)
        raise MemoryError()
    cdef bytes frame
    try:
        for i in range(n):
            frame = <bytes> items[i]
            ptrs[i] = <const uint8_t *> PyBytes_AS_STRING(frame)
            lens[i] = PyBytes_GET_SIZE(frame)
        with nogil:
            for i in range(n):
                if lens[i] > C_SIG:
                    _hash(ptrs[i] + C_SIG, lens[i] - C_SIG, ids + i * 32)
        for i in range(n):
            frame = <bytes> items[i]
            if lens[i] <= C_SIG:
                errors.append((i, "truncated"))
                continue
            try:
                ops.append(_decode(frame[C_SIG:], frame[:C_SIG],
                                   PyBytes_FromStringAndSize(<char *> (ids + i * 32), 32)))
            except MalformedOp as exc:
                errors.append((i, str(exc)))
    finally:
        free(ids); free(ptrs); free(lens)
    return ops, errors


def order(ops, known, rejected=frozenset()):
    """Sort a batch so every operation follows its dependencies: (ready, waiting, bad).
    See the twin's docstring for the rules; the results are identical. `known` is a dict
    {op id: hlc} or a Dag (looked up in C)."""
    cdef Dag dag = known if type(known) is Dag else None
    cdef KSlot *ks
    if dag is None and not isinstance(known, dict):
        raise TypeError("known is a dict or a Dag")
    cdef dict index = {}
    cdef list batch = []
    cdef Op op, other
    for op in ops:
        if (dag._kfind(<const uint8_t *> PyBytes_AS_STRING(op.id)) != NULL if dag is not None
                else op.id in known) or op.id in index:
            continue
        index[op.id] = len(batch)
        batch.append(op)
    cdef Py_ssize_t n = len(batch), i, j, c, head = 0, qlen = 0, nchild = 0
    cdef list ready = [], waiting = [], bad = []
    if n == 0:
        return ready, waiting, bad
    cdef int *indegree = <int *> malloc(n * sizeof(int))
    cdef Py_ssize_t *queue = <Py_ssize_t *> malloc(n * sizeof(Py_ssize_t))
    cdef char *state = <char *> malloc(n)
    cdef Py_ssize_t *first = <Py_ssize_t *> malloc(n * sizeof(Py_ssize_t))  # children as linked lists
    cdef Py_ssize_t *last = <Py_ssize_t *> malloc(n * sizeof(Py_ssize_t))
    cdef Py_ssize_t total_deps = 0
    for op in batch:
        total_deps += len(op.deps)
    cdef Py_ssize_t *child = <Py_ssize_t *> malloc((total_deps + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t *nxt = <Py_ssize_t *> malloc((total_deps + 1) * sizeof(Py_ssize_t))
    cdef int status
    cdef str reason
    cdef unsigned long long dep_hlc
    try:
        if not (indegree and queue and state and first and last and child and nxt):
            raise MemoryError()
        for i in range(n):
            indegree[i] = 0
            state[i] = 0
            first[i] = -1
            last[i] = -1
        for i in range(n):
            op = <Op> batch[i]
            for dep in op.deps:
                found = index.get(dep)
                if found is not None:
                    j = <Py_ssize_t> found
                    indegree[i] += 1
                    child[nchild] = i
                    nxt[nchild] = -1
                    if last[j] < 0:
                        first[j] = nchild
                    else:
                        nxt[last[j]] = nchild
                    last[j] = nchild
                    nchild += 1
        for i in range(n):
            if indegree[i] == 0:
                queue[qlen] = i
                qlen += 1
        while head < qlen:
            i = queue[head]
            head += 1
            op = <Op> batch[i]
            status = 1
            reason = ""
            for dep in op.deps:
                if dep == op.id:
                    status = 3
                    reason = "dependency cycle"
                    break
                found = index.get(dep)
                if found is not None:
                    j = <Py_ssize_t> found
                    if state[j] == 3:
                        status = 3
                        reason = "dependency rejected"
                        break
                    if state[j] == 2:
                        status = 2
                    else:
                        other = <Op> batch[j]
                        if other.hlc >= op.hlc:
                            status = 3
                            reason = "clock not after dependency"
                            break
                elif dep in rejected:
                    status = 3
                    reason = "dependency rejected"
                    break
                else:
                    if dag is not None:
                        ks = dag._kfind(<const uint8_t *> PyBytes_AS_STRING(<bytes> dep))
                        found = None if ks == NULL else ks.hlc
                    else:
                        found = known.get(dep)
                    if found is None:
                        status = 2
                    else:
                        dep_hlc = found
                        if dep_hlc >= op.hlc:
                            status = 3
                            reason = "clock not after dependency"
                            break
            state[i] = status
            if status == 1:
                ready.append(op)
            elif status == 2:
                waiting.append(op)
            else:
                bad.append((op, reason))
            c = first[i]
            while c >= 0:
                j = child[c]
                indegree[j] -= 1
                if indegree[j] == 0:
                    queue[qlen] = j
                    qlen += 1
                c = nxt[c]
        for i in range(n):
            if state[i] == 0:
                bad.append((batch[i], "dependency cycle"))
    finally:
        free(indegree); free(queue); free(state); free(first); free(last); free(child); free(nxt)
    return ready, waiting, bad


def merge(dict registers, ops):
    """Apply ops in order to last-writer-wins registers {(kind, key): (hlc, id)}; which ones won."""
    cdef list won = []
    cdef Op op
    cdef tuple cur, reg
    cdef unsigned long long cur_hlc
    cdef bytes cur_id
    for op in ops:
        reg = (op.kind, op.key)
        found = registers.get(reg)
        if found is not None:
            cur = <tuple> found
            cur_hlc = cur[0]
            cur_id = <bytes> cur[1]
            if op.hlc < cur_hlc or (op.hlc == cur_hlc and op.id <= cur_id):
                won.append(False)
                continue
        registers[reg] = (op.hlc, op.id)
        won.append(True)
    return won


def ingest(frames, dict known, dict registers):
    """parse_frames + order + merge (no signature checks): the replica's apply path for a batch.

    Ready ops are added to `known`. Returns (ready, won, waiting, bad, malformed).
    """
    ops, errors = parse_frames(frames)
    ready, waiting, bad = order(ops, known)
    won = merge(registers, ready)
    cdef Op op
    for op in ready:
        known[op.id] = op.hlc
    return ready, won, waiting, bad, errors


# -- Dag: applied ops, heads and registers in C tables --------------------------------------------
# Open addressing with linear probing. Slots are found by a hash keyed with a per-process random
# seed, so a node that grinds op ids (or entity keys) cannot aim them at one probe run.

cdef uint64_t _SEED = int.from_bytes(os.urandom(8), "little") | 1


cdef inline uint64_t _fmix(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t _hid(const uint8_t *op_id) noexcept nogil:
    return _fmix(_u64le(op_id) ^ _SEED)


cdef inline uint64_t _hkey(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = _SEED ^ (<uint64_t> n * 0x9E3779B97F4A7C15ULL), v = 0
    cdef Py_ssize_t i
    while n >= 8:
        h = _fmix(h ^ _u64le(p))
        p += 8
        n -= 8
    for i in range(n):
        v |= (<uint64_t> p[i]) << (8 * i)
    return _fmix(h ^ v ^ 0x5bd1e995)


cdef struct KSlot:
    uint8_t id[32]
    uint64_t hlc
    int32_t head  # position in the heads array, -1 when not a head
    int32_t used


cdef struct RSlot:
    uint64_t h
    uint64_t hlc
    uint8_t id[32]
    size_t off  # register key (kind \0 key) in the key arena
    size_t len  # 0: empty slot


cdef enum:
    REG_MAX = 32 + 1 + 255
    R_READY = 1
    R_WAITING = 2
    R_BAD = 3
    B_CYCLE = 1
    B_DEP_REJECTED = 2
    B_CLOCK = 3

_BAD = ("", "dependency cycle", "dependency rejected", "clock not after dependency")


cdef inline Py_ssize_t _regkey(const uint8_t *blob, Parsed *p, uint8_t *out) noexcept nogil:
    memcpy(out, blob + p.kind_off, p.kind_len)
    out[p.kind_len] = 0
    memcpy(out + p.kind_len + 1, blob + p.key_off, p.key_len)
    return p.kind_len + 1 + p.key_len


@cython.final
cdef class Dag:
    """One replica's applied operations (id -> hlc), heads and last-writer-wins registers.

    Kept in C tables so `ingest` applies a whole batch of frames without one Python object per
    operation (and without the GIL once the frames are hashed). Same API and results as the twin.
    """

    cdef KSlot *ks
    cdef size_t kcap, kcount
    cdef uint8_t *hd
    cdef size_t hcount, hcap
    cdef RSlot *rs
    cdef size_t rcap, rcount
    cdef uint8_t *arena
    cdef size_t alen, acap
    cdef readonly unsigned long long max_hlc

    def __cinit__(self):
        self.kcap = 1024
        self.ks = <KSlot *> calloc(self.kcap, sizeof(KSlot))
        self.hcap = 64
        self.hd = <uint8_t *> malloc(self.hcap * 32)
        self.rcap = 1024
        self.rs = <RSlot *> calloc(self.rcap, sizeof(RSlot))
        self.acap = 1 << 16
        self.arena = <uint8_t *> malloc(self.acap)
        if self.ks == NULL or self.hd == NULL or self.rs == NULL or self.arena == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.ks)
        free(self.hd)
        free(self.rs)
        free(self.arena)

    # -- C level -----------------------------------------------------------------------------
    cdef inline size_t _kslot(self, const uint8_t *op_id) noexcept nogil:
        cdef size_t mask = self.kcap - 1, i = _hid(op_id) & mask
        while self.ks[i].used and memcmp(self.ks[i].id, op_id, 32) != 0:
            i = (i + 1) & mask
        return i

    cdef inline KSlot *_kfind(self, const uint8_t *op_id) noexcept nogil:
        cdef size_t i = self._kslot(op_id)
        return &self.ks[i] if self.ks[i].used else NULL

    cdef int _kgrow(self) noexcept nogil:
        cdef size_t old_cap = self.kcap, i, j, mask
        cdef KSlot *old = self.ks
        cdef KSlot *new = <KSlot *> calloc(old_cap * 2, sizeof(KSlot))
        if new == NULL:
            return -1
        self.ks = new
        self.kcap = old_cap * 2
        mask = self.kcap - 1
        for i in range(old_cap):
            if old[i].used:
                j = _hid(old[i].id) & mask
                while new[j].used:
                    j = (j + 1) & mask
                new[j] = old[i]
        free(old)
        return 0

    cdef int _kreserve(self, size_t count) noexcept nogil:
        while count * 2 > self.kcap:
            if self._kgrow() < 0:
                return -1
        return 0

    cdef int _rgrow(self) noexcept nogil:
        cdef size_t old_cap = self.rcap, i, j, mask
        cdef RSlot *old = self.rs
        cdef RSlot *new = <RSlot *> calloc(old_cap * 2, sizeof(RSlot))
        if new == NULL:
            return -1
        self.rs = new
        self.rcap = old_cap * 2
        mask = self.rcap - 1
        for i in range(old_cap):
            if old[i].len:
                j = old[i].h & mask
                while new[j].len:
                    j = (j + 1) & mask
                new[j] = old[i]
        free(old)
        return 0

    cdef inline void _unhead(self, const uint8_t *dep) noexcept nogil:
        cdef KSlot *s = self._kfind(dep)
        cdef KSlot *moved
        cdef size_t last
        if s == NULL or s.head < 0:
            return
        last = self.hcount - 1
        if <size_t> s.head != last:
            memcpy(self.hd + s.head * 32, self.hd + last * 32, 32)
            moved = self._kfind(self.hd + s.head * 32)
            moved.head = s.head
        s.head = -1
        self.hcount = last

    cdef int _add(self, const uint8_t *op_id, uint64_t hlc) noexcept nogil:
        """Record an applied op as known and a head (its deps were un-headed by the caller)."""
        cdef uint8_t *hd
        cdef KSlot *s
        if (self.kcount + 1) * 2 > self.kcap and self._kgrow() < 0:
            return -1
        if self.hcount == self.hcap:
            hd = <uint8_t *> realloc(self.hd, self.hcap * 2 * 32)
            if hd == NULL:
                return -1
            self.hd = hd
            self.hcap *= 2
        s = &self.ks[self._kslot(op_id)]
        memcpy(s.id, op_id, 32)
        s.hlc = hlc
        s.used = 1
        s.head = self.hcount
        memcpy(self.hd + self.hcount * 32, op_id, 32)
        self.hcount += 1
        self.kcount += 1
        if hlc > self.max_hlc:
            self.max_hlc = hlc
        return 0

    cdef inline RSlot *_rfind(self, const uint8_t *key, size_t n, uint64_t h) noexcept nogil:
        cdef size_t mask = self.rcap - 1, i = h & mask
        while self.rs[i].len and not (self.rs[i].h == h and self.rs[i].len == n
                                      and memcmp(self.arena + self.rs[i].off, key, n) == 0):
            i = (i + 1) & mask
        return &self.rs[i]

    cdef int _merge(self, const uint8_t *key, size_t n, uint64_t hlc, const uint8_t *op_id) noexcept nogil:
        """1 if (hlc, op_id) wins register `key`, 0 if not, -1 out of memory."""
        cdef uint64_t h = _hkey(key, n)
        cdef RSlot *r = self._rfind(key, n, h)
        cdef uint8_t *arena
        cdef size_t cap
        if r.len:
            if hlc < r.hlc or (hlc == r.hlc and memcmp(op_id, r.id, 32) <= 0):
                return 0
            r.hlc = hlc
            memcpy(r.id, op_id, 32)
            return 1
        if (self.rcount + 1) * 2 > self.rcap:
            if self._rgrow() < 0:
                return -1
            r = self._rfind(key, n, h)
        if self.alen + n > self.acap:
            cap = self.acap * 2
            while self.alen + n > cap:
                cap *= 2
            arena = <uint8_t *> realloc(self.arena, cap)
            if arena == NULL:
                return -1
            self.arena = arena
            self.acap = cap
        memcpy(self.arena + self.alen, key, n)
        r.h = h
        r.hlc = hlc
        memcpy(r.id, op_id, 32)
        r.off = self.alen
        r.len = n
        self.alen += n
        self.rcount += 1
        return 1

    # -- Python API ----------------------------------------------------------------------------
    def __len__(self):
        return self.kcount

    def __contains__(self, op_id):
        if type(op_id) is not bytes or PyBytes_GET_SIZE(op_id) != 32:
            return False
        return self._kfind(<const uint8_t *> PyBytes_AS_STRING(op_id)) != NULL

    def __iter__(self):
        return iter(self.ids())

    def get(self, op_id, default=None):
        """The hlc of an applied op."""
        cdef KSlot *s
        if type(op_id) is not bytes or PyBytes_GET_SIZE(op_id) != 32:
            return default
        s = self._kfind(<const uint8_t *> PyBytes_AS_STRING(op_id))
        return default if s == NULL else s.hlc

    def ids(self):
        """Every applied op id, sorted."""
        cdef size_t i
        out = [PyBytes_FromStringAndSize(<char *> self.ks[i].id, 32) for i in range(self.kcap) if self.ks[i].used]
        out.sort()
        return out

    def heads(self):
        """Applied ops no other applied op depends on, sorted."""
        cdef size_t i
        out = [PyBytes_FromStringAndSize(<char *> (self.hd + i * 32), 32) for i in range(self.hcount)]
        out.sort()
        return out

    @property
    def register_count(self):
        return self.rcount

    def register(self, str kind, str key):
        """The (hlc, op id) holding register (kind, key)."""
        cdef bytes k = kind.encode() + b"\0" + key.encode()
        cdef size_t n = PyBytes_GET_SIZE(k)
        cdef const uint8_t *p = <const uint8_t *> PyBytes_AS_STRING(k)
        cdef RSlot *r = self._rfind(p, n, _hkey(p, n))
        if not r.len:
            return None
        return (r.hlc, PyBytes_FromStringAndSize(<char *> r.id, 32))

    def registers(self):
        """A copy of every register: {(kind, key): (hlc, op id)}."""
        cdef dict out = {}
        cdef size_t i
        cdef const uint8_t *k
        cdef const uint8_t *sep
        for i in range(self.rcap):
            if self.rs[i].len:
                k = self.arena + self.rs[i].off
                sep = <const uint8_t *> memchr(k, 0, self.rs[i].len)
                out[(PyUnicode_DecodeUTF8(<const char *> k, sep - k, "strict"),
                     PyUnicode_DecodeUTF8(<const char *> (sep + 1), self.rs[i].len - (sep - k) - 1, "strict"))] = (
                    self.rs[i].hlc, PyBytes_FromStringAndSize(<char *> self.rs[i].id, 32))
        return out

    def apply(self, ops):
        """Apply ops already in causal order (see `order`); which won their register.
        An op applied before is skipped (and did not win)."""
        cdef list won = []
        cdef uint8_t key[REG_MAX]
        cdef const char *kp
        cdef const char *yp
        cdef Py_ssize_t kn, yn
        cdef bytes op_id
        cdef int r
        cdef Op o
        cdef Parsed p
        cdef const uint8_t *blob
        if isinstance(ops, (list, tuple)) and self._kreserve(self.kcount + len(ops)) < 0:
            raise MemoryError()
        for op in ops:
            if type(op) is Op:  # C fields; kind and key straight from the blob
                o = <Op> op
                op_id = o.id
                if PyBytes_GET_SIZE(op_id) != 32:
                    raise ValueError("ids are 32 bytes")
                if self._kfind(<const uint8_t *> PyBytes_AS_STRING(op_id)) != NULL:
                    won.append(False)
                    continue
                blob = <const uint8_t *> PyBytes_AS_STRING(o.blob)
                if _scan(blob, PyBytes_GET_SIZE(o.blob), &p) != E_OK:
                    raise ValueError("not a decoded operation")
                r = self._merge(key, _regkey(blob, &p, key), o.hlc, <const uint8_t *> PyBytes_AS_STRING(op_id))
                if r < 0:
                    raise MemoryError()
                won.append(r == 1)
                for kn in range(p.ndeps):
                    self._unhead(p.deps + kn * 32)
                if self._add(<const uint8_t *> PyBytes_AS_STRING(op_id), o.hlc) < 0:
                    raise MemoryError()
                continue
            op_id = op.id
            if PyBytes_GET_SIZE(op_id) != 32:
                raise ValueError("ids are 32 bytes")
            if self._kfind(<const uint8_t *> PyBytes_AS_STRING(op_id)) != NULL:
                won.append(False)
                continue
            kp = PyUnicode_AsUTF8AndSize(op.kind, &kn)
            yp = PyUnicode_AsUTF8AndSize(op.key, &yn)
            if kn > C_MAX_KIND or yn > C_MAX_KEY:
                raise ValueError("kind or key too long")
            memcpy(key, kp, kn)
            key[kn] = 0
            memcpy(key + kn + 1, yp, yn)
            r = self._merge(key, kn + 1 + yn, op.hlc, <const uint8_t *> PyBytes_AS_STRING(op_id))
            if r < 0:
                raise MemoryError()
            won.append(r == 1)
            for dep in op.deps:
                if PyBytes_GET_SIZE(dep) == 32:
                    self._unhead(<const uint8_t *> PyBytes_AS_STRING(dep))
            if self._add(<const uint8_t *> PyBytes_AS_STRING(op_id), op.hlc) < 0:
                raise MemoryError()
        return won

    def export(self):
        """Every applied op as a 40-byte record (id, hlc u64 big-endian), sorted: a snapshot's cover."""
        cdef size_t i
        cdef int w
        cdef uint8_t rec[40]
        cdef list out = []
        for i in range(self.kcap):
            if self.ks[i].used:
                memcpy(rec, self.ks[i].id, 32)
                for w in range(8):
                    rec[32 + w] = (self.ks[i].hlc >> (56 - 8 * w)) & 0xFF
                out.append(PyBytes_FromStringAndSize(<char *> rec, 40))
        out.sort()
        return b"".join(out)

    def cover(self, const uint8_t[:] records, heads, ops):
        """Adopt a snapshot on an empty Dag: the `export` records are known ops, `heads` its heads,
        and `ops` (each covered, with the same hlc) fill the registers. ValueError if inconsistent
        (then discard the Dag)."""
        cdef Py_ssize_t n = records.shape[0], at
        cdef KSlot *s
        cdef Parsed p
        cdef uint8_t key[REG_MAX]
        cdef const uint8_t *blob
        cdef Op o
        if self.kcount:
            raise ValueError("cover is for an empty Dag")
        if n % 40:
            raise ValueError("records are 40 bytes each")
        if self._kreserve(n // 40) < 0:
            raise MemoryError()
        for at in range(0, n, 40):
            s = &self.ks[self._kslot(&records[at])]
            if not s.used:
                memcpy(s.id, &records[at], 32)
                s.used = 1
                s.head = -1
                self.kcount += 1
            s.hlc = _u64(&records[at + 32])
            if s.hlc > self.max_hlc:
                self.max_hlc = s.hlc
        for head in heads:
            if type(head) is not bytes or PyBytes_GET_SIZE(head) != 32:
                raise ValueError("a head is not covered")
            s = self._kfind(<const uint8_t *> PyBytes_AS_STRING(head))
            if s == NULL:
                raise ValueError("a head is not covered")
            if s.head >= 0:
                continue
            if self.hcount == self.hcap:
                hd = <uint8_t *> realloc(self.hd, self.hcap * 2 * 32)
                if hd == NULL:
                    raise MemoryError()
                self.hd = hd
                self.hcap *= 2
            s.head = self.hcount
            memcpy(self.hd + self.hcount * 32, s.id, 32)
            self.hcount += 1
        for op in ops:
            o = <Op?> op
            s = self._kfind(<const uint8_t *> PyBytes_AS_STRING(o.id))
            if s == NULL or s.hlc != o.hlc:
                raise ValueError("a register's op is not covered")
            blob = <const uint8_t *> PyBytes_AS_STRING(o.blob)
            if _scan(blob, PyBytes_GET_SIZE(o.blob), &p) != E_OK:
                raise ValueError("not a decoded operation")
            if self._merge(key, _regkey(blob, &p, key), o.hlc, <const uint8_t *> PyBytes_AS_STRING(o.id)) < 0:
                raise MemoryError()

    def ingest(self, frames, rejected=frozenset()):
        """parse + hash + `order` + `apply` a batch of signed frames (no signature checks).

        Returns frame indices: (ready in apply order, won per ready op, waiting, bad with a reason,
        malformed with a reason). Duplicates and known ops are dropped, as in `order`.
        """
        cdef list items = [f if type(f) is bytes else bytes(f) for f in frames]
        cdef Py_ssize_t n = len(items), i, b, j, d, e, m = 0, total = 0, head = 0, qlen = 0, nchild = 0
        cdef list ready = [], won = [], waiting = [], bad = [], malformed = []
        if n == 0:
            return ready, won, waiting, bad, malformed
        cdef bint has_rejected = len(rejected) > 0
        cdef size_t bcap = 16, bmask, slot, cap0 = 0, cap1 = 0
        while bcap < 2 * <size_t> n:
            bcap <<= 1
        bmask = bcap - 1
        cdef uint8_t *s0 = <uint8_t *> _take(0, n * (8 + 8 + 32 + sizeof(Parsed) + 8 + 8) + bcap * 8 + 8 * 16, &cap0)
        cdef uint8_t *s1 = NULL
        cdef uint8_t *cur = s0
        cdef const uint8_t **ptrs = <const uint8_t **> _bump(&cur, n * sizeof(uint8_t *))
        cdef Py_ssize_t *lens = <Py_ssize_t *> _bump(&cur, n * sizeof(Py_ssize_t))
        cdef uint8_t *ids = <uint8_t *> _bump(&cur, n * 32)
        cdef Parsed *parsed = <Parsed *> _bump(&cur, n * sizeof(Parsed))
        cdef int *err = <int *> _bump(&cur, n * sizeof(int))
        cdef Py_ssize_t *bidx = <Py_ssize_t *> _bump(&cur, n * sizeof(Py_ssize_t))  # batch position -> frame
        cdef Py_ssize_t *btab = <Py_ssize_t *> _bump(&cur, bcap * sizeof(Py_ssize_t))  # id -> batch position
        cdef Py_ssize_t *estart
        cdef Py_ssize_t *depj
        cdef Py_ssize_t *queue
        cdef Py_ssize_t *first
        cdef Py_ssize_t *last
        cdef Py_ssize_t *child
        cdef Py_ssize_t *nxt
        cdef int *indegree
        cdef char *rej
        cdef char *state
        cdef char *why
        cdef char *wins
        cdef const uint8_t *blob
        cdef const uint8_t *dep
        cdef const uint8_t *oid
        cdef Parsed *p
        cdef KSlot *ks
        cdef uint8_t key[REG_MAX]
        cdef int status, reason, r, oom = 0
        cdef bytes frame
        try:
            for i in range(n):
                frame = <bytes> items[i]
                ptrs[i] = <const uint8_t *> PyBytes_AS_STRING(frame)
                lens[i] = PyBytes_GET_SIZE(frame)
            with nogil:
                for i in range(n):
                    err[i] = E_TRUNCATED if lens[i] <= C_SIG else _scan(ptrs[i] + C_SIG, lens[i] - C_SIG, &parsed[i])
                _hash_batch(ptrs, lens, err, n, C_SIG, ids)
                # the batch: the first copy of each op not known yet
                for slot in range(bcap):
                    btab[slot] = -1
                for i in range(n):
                    if err[i] != E_OK:
                        continue
                    oid = ids + i * 32
                    if self._kfind(oid) != NULL:
                        continue
                    slot = _hid(oid) & bmask
                    while btab[slot] >= 0 and memcmp(ids + bidx[btab[slot]] * 32, oid, 32) != 0:
                        slot = (slot + 1) & bmask
                    if btab[slot] >= 0:
                        continue
                    btab[slot] = m
                    bidx[m] = i
                    total += parsed[i].ndeps
                    m += 1
            for i in range(n):
                if err[i] != E_OK:
                    malformed.append((i, _REASONS[err[i]]))
            if m == 0:
                return ready, won, waiting, bad, malformed
            s1 = <uint8_t *> _take(1, (m + 1) * 8 + (total + 1) * 8 * 3 + m * 8 * 3 + m * 4 + total + 1 + 3 * m
                                    + 13 * 16, &cap1)
            cur = s1
            estart = <Py_ssize_t *> _bump(&cur, (m + 1) * sizeof(Py_ssize_t))
            depj = <Py_ssize_t *> _bump(&cur, (total + 1) * sizeof(Py_ssize_t))
            child = <Py_ssize_t *> _bump(&cur, (total + 1) * sizeof(Py_ssize_t))
            nxt = <Py_ssize_t *> _bump(&cur, (total + 1) * sizeof(Py_ssize_t))
            queue = <Py_ssize_t *> _bump(&cur, m * sizeof(Py_ssize_t))
            first = <Py_ssize_t *> _bump(&cur, m * sizeof(Py_ssize_t))
            last = <Py_ssize_t *> _bump(&cur, m * sizeof(Py_ssize_t))
            indegree = <int *> _bump(&cur, m * sizeof(int))
            rej = <char *> _bump(&cur, total + 1)
            state = <char *> _bump(&cur, m)
            why = <char *> _bump(&cur, m)
            wins = <char *> _bump(&cur, m)
            with nogil:
                memset(indegree, 0, m * sizeof(int))
                memset(rej, 0, total + 1)
                memset(state, 0, m)
                memset(why, 0, m)
                memset(wins, 0, m)
                e = 0
                for b in range(m):
                    estart[b] = e
                    first[b] = -1
                    last[b] = -1
                    p = &parsed[bidx[b]]
                    for d in range(p.ndeps):
                        dep = p.deps + d * 32
                        slot = _hid(dep) & bmask
                        while btab[slot] >= 0 and memcmp(ids + bidx[btab[slot]] * 32, dep, 32) != 0:
                            slot = (slot + 1) & bmask
                        depj[e] = btab[slot]
                        e += 1
                estart[m] = e
                for b in range(m):
                    for e in range(estart[b], estart[b + 1]):
                        j = depj[e]
                        if j >= 0:
                            indegree[b] += 1
                            child[nchild] = b
                            nxt[nchild] = -1
                            if last[j] < 0:
                                first[j] = nchild
                            else:
                                nxt[last[j]] = nchild
                            last[j] = nchild
                            nchild += 1
            if has_rejected:  # deps outside the batch that were rejected before (a Python set)
                for b in range(m):
                    p = &parsed[bidx[b]]
                    for d in range(p.ndeps):
                        if depj[estart[b] + d] < 0:
                            rej[estart[b] + d] = PyBytes_FromStringAndSize(
                                <const char *> (p.deps + d * 32), 32) in rejected
            with nogil:
                if self._kreserve(self.kcount + m) < 0:
                    oom = 1
                for b in range(m):
                    if indegree[b] == 0:
                        queue[qlen] = b
                        qlen += 1
                while head < qlen:
                    b = queue[head]
                    head += 1
                    p = &parsed[bidx[b]]
                    oid = ids + bidx[b] * 32
                    status = R_READY
                    reason = 0
                    for d in range(p.ndeps):
                        dep = p.deps + d * 32
                        e = estart[b] + d
                        if memcmp(dep, oid, 32) == 0:
                            status, reason = R_BAD, B_CYCLE
                            break
                        j = depj[e]
                        if j >= 0:
                            if state[j] == R_BAD:
                                status, reason = R_BAD, B_DEP_REJECTED
                                break
                            if state[j] == R_WAITING:
                                status = R_WAITING
                            elif parsed[bidx[j]].hlc >= p.hlc:
                                status, reason = R_BAD, B_CLOCK
                                break
                        elif rej[e]:
                            status, reason = R_BAD, B_DEP_REJECTED
                            break
                        else:
                            ks = self._kfind(dep)
                            if ks == NULL:
                                status = R_WAITING
                            elif ks.hlc >= p.hlc:
                                status, reason = R_BAD, B_CLOCK
                                break
                    state[b] = status
                    why[b] = reason
                    e = first[b]
                    while e >= 0:
                        j = child[e]
                        indegree[j] -= 1
                        if indegree[j] == 0:
                            queue[qlen] = j
                            qlen += 1
                        e = nxt[e]
                # apply the ready ones in that order
                for head in range(qlen):
                    if oom:
                        break
                    b = queue[head]
                    if state[b] != R_READY:
                        continue
                    i = bidx[b]
                    p = &parsed[i]
                    blob = ptrs[i] + C_SIG
                    oid = ids + i * 32
                    r = self._merge(key, _regkey(blob, p, key), p.hlc, oid)
                    if r < 0:
                        oom = 1
                        break
                    wins[b] = r
                    for d in range(p.ndeps):
                        self._unhead(p.deps + d * 32)
                    if self._add(oid, p.hlc) < 0:
                        oom = 1
                        break
            if oom:
                raise MemoryError()
            for head in range(qlen):
                b = queue[head]
                if state[b] == R_READY:
                    ready.append(bidx[b])
                    won.append(wins[b] == 1)
                elif state[b] == R_WAITING:
                    waiting.append(bidx[b])
                else:
                    bad.append((bidx[b], _BAD[why[b]]))
            for b in range(m):
                if state[b] == 0:
                    bad.append((bidx[b], "dependency cycle"))
        finally:
            _give(0, s0, cap0)
            if s1 != NULL:
                _give(1, s1, cap1)
        return ready, won, waiting, bad, malformed


# Scratch memory for ingest, kept between calls (taken and given back with the GIL held, so two
# threads never share one; a second concurrent caller gets its own).
cdef void *_pool[2]
cdef size_t _pool_cap[2]
_pool[0] = NULL
_pool[1] = NULL
_pool_cap[0] = 0
_pool_cap[1] = 0
cdef enum:
    POOL_KEEP = 64 << 20


cdef void *_take(int slot, size_t need, size_t *cap) except NULL:
    cdef void *p = _pool[slot]
    if p != NULL and _pool_cap[slot] >= need:
        cap[0] = _pool_cap[slot]
        _pool[slot] = NULL
        return p
    if p != NULL:
        free(p)
        _pool[slot] = NULL
    p = malloc(need)
    if p == NULL:
        raise MemoryError()
    cap[0] = need
    return p


cdef void _give(int slot, void *p, size_t cap) noexcept:
    if _pool[slot] == NULL and cap <= POOL_KEEP:
        _pool[slot] = p
        _pool_cap[slot] = cap
    else:
        free(p)


cdef inline void *_bump(uint8_t **cur, size_t size) noexcept:
    cdef void *p = cur[0]
    cur[0] += (size + 15) & ~(<size_t> 15)
    return p


# -- Bloom filters of op ids (layout in the twin) -------------------------------------------------

def bloom_new(capacity, fp_rate=0.01):
    """An empty filter sized for `capacity` ids at false-positive rate `fp_rate`."""
    capacity = max(1, capacity)
    if not 0.0 < fp_rate < 1.0:
        raise ValueError("fp_rate is between 0 and 1")
    m = max(64, math.ceil(-capacity * math.log(fp_rate) / (math.log(2) ** 2)))
    m = (m + 7) // 8 * 8
    k = min(16, max(1, round(m / capacity * math.log(2))))
    out = bytearray(1 + m // 8)
    out[0] = k
    return out


cdef inline bint _bloom_op(uint8_t *bits, uint64_t m, int k, const uint8_t *op_id, bint add) noexcept nogil:
    cdef uint64_t h1 = _u64le(op_id), h2 = _u64le(op_id + 8) | 1, p
    cdef int i
    for i in range(k):
        p = (h1 + <uint64_t> i * h2) % m
        if add:
            bits[p >> 3] |= <uint8_t> (1 << (p & 7))
        elif not (bits[p >> 3] & (1 << (p & 7))):
            return False
    return True


cdef inline int _shape(const uint8_t[:] bloom) except -1:
    if bloom.shape[0] < 2 or not 1 <= bloom[0] <= 32:
        raise ValueError("not a bloom filter")
    return bloom[0]


def bloom_add(bytearray bloom, bytes op_id):
    cdef uint8_t[:] view = bloom
    cdef int k = _shape(view)
    if len(op_id) != ID_LEN:
        raise ValueError("ids are 32 bytes")
    _bloom_op(&view[1], (view.shape[0] - 1) * 8, k, <const uint8_t *> PyBytes_AS_STRING(op_id), True)


def bloom_has(bloom, bytes op_id):
    cdef const uint8_t[:] view = bloom
    cdef int k = _shape(view)
    if len(op_id) != ID_LEN:
        raise ValueError("ids are 32 bytes")
    return _bloom_op(<uint8_t *> &view[1], (view.shape[0] - 1) * 8, k,
                     <const uint8_t *> PyBytes_AS_STRING(op_id), False)


def bloom_build(ids, fp_rate=0.01):
    cdef bytearray bloom = bloom_new(len(ids), fp_rate)
    cdef uint8_t[:] view = bloom
    cdef uint64_t m = (view.shape[0] - 1) * 8
    cdef int k = view[0]
    for op_id in ids:
        if len(op_id) != ID_LEN:
            raise ValueError("ids are 32 bytes")
        _bloom_op(&view[1], m, k, <const uint8_t *> PyBytes_AS_STRING(<bytes> op_id), True)
    return bytes(bloom)


def bloom_missing(bloom, ids):
    """Indices of the ids the filter certainly does not hold."""
    cdef const uint8_t[:] view = bloom
    cdef int k = _shape(view)
    cdef uint64_t m = (view.shape[0] - 1) * 8
    cdef list out = []
    cdef Py_ssize_t i = 0
    for op_id in ids:
        if len(op_id) != ID_LEN:
            raise ValueError("ids are 32 bytes")
        if not _bloom_op(<uint8_t *> &view[1], m, k, <const uint8_t *> PyBytes_AS_STRING(<bytes> op_id), False):
            out.append(i)
        i += 1
    return out
