# cython: language_level=3
# distutils: sources = ext/xxhash/xxhash.c ext/xxhash/shoal_dispatch.c
# distutils: include_dirs = ext/xxhash
"""Reed-Solomon 3+2 fragment framing and stripe assembly around pyeclib.

Twin: shoal/_pure/erasure.py (same functions, byte-identical fragments, same errors). The
format, the driver, the errors and the decode logic live in shoal.erasure.format.

What makes the framing nearly free (docs/erasure.md has the figures):
- no copy: shoal's fields go into pyeclib's own 80-byte header, written in place into the
  bytes objects pyeclib just returned (nothing else can see them yet; if anything holds a
  second reference the fragment is copied instead);
- the payload hashes are XXH3-64 (ext/xxhash, runtime AVX2 dispatch), computed without the
  GIL; a data fragment's payload is the input itself (systematic code), so a worker thread
  (ext/xxhash/shoal_xxh.h) hashes it on the second core while pyeclib encodes (used only
  while it measures faster than hashing inline: a busy second core makes it slower);
- decode hashes only the 3 fragments it uses, on the worker while pyeclib decodes, and
  copies-and-hashes data fragments in one pass when 0, 1 and 2 are all there.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from shoal.erasure.format import (
    DRIVER,
    HEADER_SIZE,
    MAGIC,
    OFF_CHECK,
    OFF_MAGIC,
    OFF_META_CRC,
    VERSION,
    CorruptFragment,
    ErasureError,
    FragmentInfo,
    check_with,
    decode_with,
    pyeclib_decode,
    require_layout,
)

__all__ = ["assemble", "check", "decode", "encode", "fragment_info", "header_info"]

cdef extern from "shoal_xxh.h" nogil:
    ctypedef struct shoal_task:
        const char *p
        size_t n
        size_t zeros
        uint64_t out
    uint64_t shoal_xxh3(const void *p, size_t n)
    uint64_t shoal_xxh3_padded(const void *p, size_t n, size_t zeros)
    uint64_t shoal_copy_xxh3(char *dst, const char *src, size_t take, size_t total)
    uint32_t shoal_crc32(const unsigned char *p, size_t n)
    void shoal_run_tasks(shoal_task *t, int n)
    int shoal_worker_post(shoal_task *t, int n)
    void shoal_worker_wait()

cdef extern from "Python.h":
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject *o)

cdef enum:
    K = 3
    M = 2
    N = 5
    HSIZE = 80
    O_MAGIC = 21
    O_STRIPE = 29
    O_PAYLOAD = 37
    O_META_CRC = 67
    META = 59
    O_CHECK = 71
    O_LAST = 79

assert HEADER_SIZE == HSIZE and OFF_MAGIC == O_MAGIC and OFF_CHECK == O_CHECK and OFF_META_CRC == O_META_CRC
from shoal.erasure import format as _format

assert MAGIC == b"SHEC" and (_format.K, _format.M, _format.N) == (K, M, N) and VERSION == 2
cdef const char *_MAGIC = b"SHEC"
cdef bint _worker_on = True
cdef bint _adaptive = True


def use_worker(bint on, bint adaptive=True) -> None:
    """Allow the worker thread (default) or hash inline; adaptive=False forces the worker for
    every large call instead of choosing by measured speed (the bench's forced column)."""
    global _worker_on, _adaptive
    _worker_on = on
    _adaptive = adaptive


cdef enum:
    WORKER_MIN = 192 * 1024  # below this a wake-up costs more than the hashing it saves
    EXPLORE = 16  # every 16th large call tries the mode not in favour

# The worker only pays when the second core is free; when it is busy (another process) the
# worker time-slices with the caller and costs more than hashing inline. So each operation
# keeps a moving average of its time per byte with the worker (1) and inline (0), uses the
# faster one, and tries the other every EXPLORE calls so it notices when the core frees up.
cdef double _ns_per_byte[2][2]  # [operation: encode, decode][mode]
cdef unsigned long _calls[2]


cdef inline int _choose(int op, size_t total) noexcept:
    if not _worker_on or total < WORKER_MIN:
        return 0
    if not _adaptive:
        return 1
    _calls[op] += 1
    cdef int best = 1 if _ns_per_byte[op][1] <= _ns_per_byte[op][0] else 0
    return 1 - best if _calls[op] % EXPLORE == 0 else best


cdef inline void _learn(int op, int mode, size_t total, uint64_t t0) noexcept:
    if total < WORKER_MIN or not _worker_on or not _adaptive:
        return
    cdef double sample = <double> (_now_ns() - t0) / <double> total
    cdef double *avg = &_ns_per_byte[op][mode]
    avg[0] = sample if avg[0] == 0 else 0.8 * avg[0] + 0.2 * sample


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t> ts.tv_sec * 1000000000 + <uint64_t> ts.tv_nsec


def worker_figures() -> dict:
    """The moving averages behind the worker/inline choice (ns per byte), for the bench."""
    return {
        op: {"worker": _ns_per_byte[i][1], "inline": _ns_per_byte[i][0]}
        for i, op in enumerate(("encode", "decode"))
    }


cdef inline int _post(shoal_task *t, int n, int mode) noexcept nogil:
    return shoal_worker_post(t, n) if mode else 0
cdef int _VERSION = VERSION


cdef inline void _put_u32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef inline uint32_t _get_u32(const unsigned char *p) noexcept nogil:
    return <uint32_t> p[0] | (<uint32_t> p[1] << 8) | (<uint32_t> p[2] << 16) | (<uint32_t> p[3] << 24)


cdef inline void _put_u64(unsigned char *p, uint64_t v) noexcept nogil:
    _put_u32(p, <uint32_t> v)
    _put_u32(p + 4, <uint32_t> (v >> 32))


cdef inline uint64_t _get_u64(const unsigned char *p) noexcept nogil:
    return <uint64_t> _get_u32(p) | (<uint64_t> _get_u32(p + 4) << 32)


cdef inline void _finish_header(unsigned char *h, const unsigned char *sid, uint64_t payload) noexcept nogil:
    memcpy(h + O_MAGIC, _MAGIC, 4)
    h[25] = _VERSION
    h[26] = K
    h[27] = M
    h[28] = 0
    memcpy(h + O_STRIPE, sid, 8)
    _put_u64(h + O_PAYLOAD, payload)
    memset(h + 45, 0, 8)
    _put_u32(h + O_META_CRC, shoal_crc32(h, META))
    _put_u64(h + O_CHECK, shoal_xxh3(h, O_CHECK))
    h[O_LAST] = 0


cdef inline void _hash_output_newest_first(shoal_task *tasks, Py_ssize_t per) noexcept nogil:
    """Hash fragments 4..0 in the reverse order pyeclib wrote them: the newest is in L2 still."""
    cdef int i
    for i in range(N - 1, -1, -1):
        shoal_run_tasks(&tasks[i], 1)


def encode(data) -> list:
    """The k+m fragments of `data` (any bytes-like object)."""
    require_layout()
    if type(data) is not bytes:
        data = bytes(data)
    cdef Py_ssize_t length = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t per = (length + K - 1) // K
    cdef const char *src = PyBytes_AS_STRING(data)
    cdef shoal_task tasks[5]
    cdef Py_ssize_t i, start, take
    for i in range(K):
        start = min(i * per, length)
        take = min(per, length - start)
        tasks[i].p = src + start
        tasks[i].n = take
        tasks[i].zeros = per - take
    cdef int posted, posted4 = 0
    cdef uint64_t t0 = _now_ns()
    cdef int mode = _choose(0, length)
    with nogil:
        posted = _post(tasks, K, mode)
    try:
        inner = DRIVER.encode(data)  # holds the GIL; the worker hashes the data meanwhile
        if type(inner) is not list or len(inner) != N:
            raise ErasureError("pyeclib returned an unexpected fragment list")
        for i in range(N):
            frag = inner[i]
            if type(frag) is not bytes or PyBytes_GET_SIZE(frag) != HSIZE + per:
                raise ErasureError("pyeclib returned fragments of an unexpected shape")
            if _get_u32(<const unsigned char *> PyBytes_AS_STRING(frag)) != i:
                raise ErasureError("pyeclib returned fragments out of order")
        frag = None
        for i in range(K, N):  # not 0..k-1: the worker may be reading those tasks right now
            tasks[i].p = PyBytes_AS_STRING(inner[i]) + HSIZE
            tasks[i].n = per
            tasks[i].zeros = 0
        if not posted:  # hashed here: from pyeclib's output, which is still in cache
            for i in range(K):
                tasks[i].p = PyBytes_AS_STRING(inner[i]) + HSIZE
                tasks[i].n = per
                tasks[i].zeros = 0
        with nogil:
            if posted:  # normally long done: hand it parity 4 and hash parity 3 here meanwhile
                shoal_worker_wait()
                posted = 0
                posted4 = _post(&tasks[4], 1, 1)
                shoal_run_tasks(&tasks[3], 1 if posted4 else 2)
            else:  # the worker is busy (another thread, another process), or the input is small
                _hash_output_newest_first(tasks, per)
    finally:
        with nogil:
            if posted or posted4:
                shoal_worker_wait()
    if not _systematic(inner, data, per):  # never seen; then hash what pyeclib really wrote
        for i in range(K):
            tasks[i].p = PyBytes_AS_STRING(inner[i]) + HSIZE
            tasks[i].n = per
            tasks[i].zeros = 0
        with nogil:
            shoal_run_tasks(tasks, K)
    cdef unsigned char ids[48]
    _put_u64(ids, <uint64_t> length)
    for i in range(N):
        _put_u64(ids + 8 + 8 * i, tasks[i].out)
    cdef unsigned char sid[8]
    _put_u64(sid, shoal_xxh3(ids, 48))
    cdef list out = []
    cdef bytes frag_b
    cdef unsigned char *h
    for i in range(N):
        if _refcnt(PyList_GET_ITEM(inner, i)) == 1:  # only the list pyeclib returned holds it
            frag_b = inner[i]
        else:  # someone else holds it: never write into a visible object
            frag_b = PyBytes_FromStringAndSize(PyBytes_AS_STRING(inner[i]), HSIZE + per)
        h = <unsigned char *> PyBytes_AS_STRING(frag_b)
        _finish_header(h, sid, tasks[i].out)
        out.append(frag_b)
    _learn(0, mode, length, t0)
    return out


cdef bint _systematic(list inner, bytes data, Py_ssize_t per):
    """Spot-check that data fragment i holds input bytes [i*per, ...) (verified at import)."""
    cdef const char *src = PyBytes_AS_STRING(data)
    cdef Py_ssize_t length = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i, start, take, edge
    cdef const char *payload
    for i in range(K):
        payload = PyBytes_AS_STRING(inner[i]) + HSIZE
        start = min(i * per, length)
        take = min(per, length - start)
        edge = min(take, 64)
        if memcmp(payload, src + start, edge) != 0:
            return False
        if memcmp(payload + take - edge, src + start + take - edge, edge) != 0:
            return False
        for start in range(take, per):
            if payload[start] != 0:
                return False
    return True


def header_info(frag):
    """The checked header of `frag`, its payload not yet verified; CorruptFragment if bad.

    Same checks, order and messages as format.parse_header (which the twin uses).
    """
    if frag is None:  # a typed memoryview would take None as an empty buffer
        raise TypeError("a fragment must be bytes-like, not None")
    cdef const unsigned char[::1] view = frag
    cdef Py_ssize_t size = view.shape[0]
    if size < HSIZE:
        raise CorruptFragment(f"fragment of {size} bytes is shorter than its {HSIZE}-byte header")
    cdef const unsigned char *p = &view[0]
    if memcmp(p + O_MAGIC, _MAGIC, 4) != 0:
        if memcmp(p, _MAGIC, 4) == 0:
            raise CorruptFragment(
                f"fragment in shoal erasure format 1 (header before pyeclib's), "
                f"this build reads format {VERSION} only: re-encode it"
            )
        raise CorruptFragment("not a shoal erasure fragment (bad magic)")
    if p[25] != _VERSION:
        raise CorruptFragment(f"unsupported fragment version {p[25]} (this build reads {VERSION})")
    cdef uint32_t index = _get_u32(p)
    cdef uint32_t psize = _get_u32(p + 4)
    if _get_u64(p + O_CHECK) != shoal_xxh3(p, O_CHECK):
        raise CorruptFragment(f"header checksum mismatch in fragment {index}")
    if p[O_LAST] != 0:
        raise CorruptFragment(f"reserved header byte {O_LAST} is not zero in fragment {index}")
    if p[26] != K or p[27] != M:
        raise CorruptFragment(f"fragment is {p[26]}+{p[27]}, this build decodes {K}+{M}")
    if index >= N:
        raise CorruptFragment(f"fragment index {index} is out of range 0..{N - 1}")
    cdef uint64_t length = _get_u64(p + 12)
    if psize != size - HSIZE:
        raise CorruptFragment(f"payload is {size - HSIZE} bytes, header says {psize}")
    if psize != (length + K - 1) // K:
        raise CorruptFragment(f"payload of {psize} bytes does not fit an original length of {length}")
    return FragmentInfo(
        index, K, M, length, (<const char *> p)[O_STRIPE : O_STRIPE + 8].hex(), psize, _get_u64(p + O_PAYLOAD)
    )


cdef bint _payload_ok(frag, uint64_t want):
    cdef const unsigned char[::1] view = frag
    cdef Py_ssize_t n = view.shape[0] - HSIZE
    cdef uint64_t got
    with nogil:
        got = shoal_xxh3(&view[0] + HSIZE, n)
    return got == want


def payload_ok(frag, info) -> bool:
    return _payload_ok(frag, info.checksum)


def fragment_info(frag):
    """The header of `frag` after checking it and the payload hash; CorruptFragment otherwise."""
    info = header_info(frag)
    if not _payload_ok(frag, info.checksum):
        raise CorruptFragment(f"checksum mismatch in fragment {info.index}")
    return info


def check(fragments, stripe_id=None):
    """Verify every fragment: ({index: (info, fragment)} of the valid ones, {key: reason} of the rest).

    Keys are the mapping's keys (which must equal the fragment's index) or positions in the
    iterable. A stripe_id keeps only that stripe; without one, valid fragments of two
    stripes raise MixedStripes.
    """
    return check_with(fragment_info, fragments, stripe_id)


def _decode_payloads(list frags, list infos, uint64_t length, bint fast):
    """(original or None, [payload ok]) for k header-checked fragments; see format.decode_with."""
    cdef shoal_task tasks[3]
    cdef uint64_t want[3]
    cdef int i, posted = 0
    if fast:
        return _assemble_checked(frags, infos, length)
    ins = [f if type(f) is bytes else bytes(f) for f in frags]  # pyeclib takes bytes only
    for i in range(K):
        tasks[i].p = PyBytes_AS_STRING(ins[i]) + HSIZE
        tasks[i].n = PyBytes_GET_SIZE(ins[i]) - HSIZE
        tasks[i].zeros = 0
        want[i] = infos[i].checksum
    cdef uint64_t t0 = _now_ns()
    cdef int mode = _choose(1, length)
    with nogil:
        posted = _post(tasks, K, mode)
    out = None
    try:
        try:
            out = pyeclib_decode(ins, length)  # holds the GIL; the worker hashes meanwhile
        except CorruptFragment:
            out = None  # judged below: a payload that fails its hash explains it
    finally:
        with nogil:
            if posted:
                shoal_worker_wait()
            else:
                shoal_run_tasks(tasks, K)
    _learn(1, mode, length, t0)
    oks = [tasks[i].out == want[i] for i in range(K)]
    if not all(oks):
        return None, oks
    if out is None:  # every payload is intact and pyeclib still failed: say so
        return pyeclib_decode(ins, length), oks
    return out, oks


cdef tuple _assemble_checked(list frags, list infos, uint64_t length):
    """Copy data fragments 0..k-1 into the original and hash each in the same pass."""
    cdef Py_ssize_t per = (length + K - 1) // K
    cdef Py_ssize_t i, take, done = 0
    cdef const unsigned char[::1] view
    cdef bytes out = PyBytes_FromStringAndSize(NULL, length)
    cdef char *dst = PyBytes_AS_STRING(out)
    cdef uint64_t got
    oks = []
    for i in range(K):
        view = frags[i]
        take = min(per, <Py_ssize_t> length - done)
        if view.shape[0] != HSIZE + per:
            raise CorruptFragment(f"data fragment {i} is too short to assemble")
        with nogil:
            got = shoal_copy_xxh3(dst + done, <const char *> &view[0] + HSIZE, take, per)
        oks.append(got == infos[i].checksum)
        done += take
    return (out if all(oks) else None), oks


def decode(fragments, stripe_id=None) -> bytes:
    """The original bytes from any k valid fragments of one stripe; corrupt ones are skipped.

    Only the payloads of the k fragments used are hashed (a further one only if one fails).
    """
    return decode_with(header_info, payload_ok, _decode_payloads, fragments, stripe_id)


def assemble(list data_fragments, uint64_t length) -> bytes:
    """Concatenate the payloads of data fragments 0..k-1 (checked already) into the original."""
    cdef Py_ssize_t per = (length + K - 1) // K
    cdef Py_ssize_t i, take, done = 0
    cdef const unsigned char[::1] view
    cdef bytes out = PyBytes_FromStringAndSize(NULL, length)
    cdef char *dst = PyBytes_AS_STRING(out)
    for i in range(K):
        view = data_fragments[i]
        take = min(per, <Py_ssize_t> length - done)
        if take <= 0:
            break
        if view.shape[0] < HSIZE + take:
            raise CorruptFragment(f"data fragment {i} is too short to assemble")
        with nogil:
            memcpy(dst + done, &view[HSIZE], take)
        done += take
    return out
