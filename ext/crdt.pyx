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
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy

import math


cdef extern from "blake3.h":
    ctypedef struct blake3_hasher:
        pass
    void blake3_hasher_init(blake3_hasher *self) nogil
    void blake3_hasher_update(blake3_hasher *self, const void *input, size_t input_len) nogil
    void blake3_hasher_finalize(const blake3_hasher *self, uint8_t *out, size_t out_len) nogil


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


cdef inline str _text(const uint8_t *p, Py_ssize_t n, str what):
    try:
        return PyUnicode_DecodeUTF8(<const char *> p, n, "strict")
    except UnicodeDecodeError:
        raise MalformedOp(f"bad {what}") from None


cdef tuple _deps(const uint8_t *p, Py_ssize_t n):
    return tuple([PyBytes_FromStringAndSize(<const char *> (p + i * 32), 32) for i in range(n)])


cdef Op _decode(bytes blob, bytes sig, bytes op_id):
    cdef const uint8_t *b = <const uint8_t *> PyBytes_AS_STRING(blob)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(blob), pos, i, klen, keylen, alen, vlen, ndeps
    if n < HEAD_LEN:
        raise MalformedOp("truncated")
    if memcmp(b, b"SOP1", 4) != 0:
        raise MalformedOp("bad magic")
    ndeps = (<Py_ssize_t> b[44]) << 8 | b[45]
    if ndeps > C_MAX_DEPS:
        raise MalformedOp("too many deps")
    pos = HEAD_LEN
    if pos + ndeps * 32 + 1 > n:
        raise MalformedOp("truncated")
    for i in range(1, ndeps):
        if memcmp(b + pos + (i - 1) * 32, b + pos + i * 32, 32) >= 0:
            raise MalformedOp("deps not sorted")
    cdef tuple deps = _deps(b + pos, ndeps)
    pos += ndeps * 32
    klen = b[pos]
    pos += 1
    if klen == 0 or klen > C_MAX_KIND or pos + klen + 2 > n:
        raise MalformedOp("bad kind")
    for i in range(klen):
        if not _kind_char(b[pos + i]):
            raise MalformedOp("bad kind")
    cdef str kind = PyUnicode_DecodeUTF8(<const char *> (b + pos), klen, "strict")
    pos += klen
    keylen = (<Py_ssize_t> b[pos]) << 8 | b[pos + 1]
    pos += 2
    if keylen == 0 or keylen > C_MAX_KEY or pos + keylen + 1 > n:
        raise MalformedOp("bad key")
    cdef str key = _text(b + pos, keylen, "key")
    pos += keylen
    alen = b[pos]
    pos += 1
    if pos + alen + 1 > n:
        raise MalformedOp("bad actor")
    cdef str actor = _text(b + pos, alen, "actor")
    pos += alen
    cdef uint8_t flag = b[pos]
    pos += 1
    value = None
    if flag == 1:
        if pos + 4 > n:
            raise MalformedOp("truncated")
        vlen = (<Py_ssize_t> b[pos]) << 24 | (<Py_ssize_t> b[pos + 1]) << 16 | (<Py_ssize_t> b[pos + 2]) << 8 | b[pos + 3]
        pos += 4
        if vlen > C_MAX_VALUE:
            raise MalformedOp("value too large")
        if pos + vlen > n:
            raise MalformedOp("truncated")
        value = PyBytes_FromStringAndSize(<const char *> (b + pos), vlen)
        pos += vlen
    elif flag != 0:
        raise MalformedOp("bad value flag")
    if pos != n:
        raise MalformedOp("trailing bytes")
    cdef Op op = Op.__new__(Op)
    op.id = op_id
    op.author = PyBytes_FromStringAndSize(<const char *> (b + 4), 32)
    op.hlc = _u64(b + 36)
    op.deps = deps
    op.kind = kind
    op.key = key
    op.actor = actor
    op.value = value
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


def order(ops, dict known, rejected=frozenset()):
    """Sort a batch so every operation follows its dependencies: (ready, waiting, bad).
    See the twin's docstring for the rules; the results are identical."""
    cdef dict index = {}
    cdef list batch = []
    cdef Op op, other
    for op in ops:
        if op.id in known or op.id in index:
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
