# cython: language_level=3
# distutils: sources = ext/xxhash/xxhash.c ext/xxhash/shoal_dispatch.c
# distutils: include_dirs = ext/xxhash
"""Reed-Solomon 3+2 coding, fragment framing and stripe assembly, without the GIL.

Twin: shoal/_pure/erasure.py (same functions, byte-identical fragments, same errors), which
codes through pyeclib. The format, the driver, the errors and the decode logic live in
shoal.erasure.format.

The native module codes with ISA-L itself: the very library pyeclib's isa_l_rs_vand backend
loads (found in this process, not a second copy), the same Vandermonde matrix, so fragments
are byte-identical to pyeclib's (checked at import; any difference, or no ISA-L, and it codes
through pyeclib instead). Going to ISA-L directly is what makes the framing cheap:
- pyeclib codes into liberasurecode's buffers, zeroes them first and then copies every
  fragment into a bytes object (57% of its encode time is memset + memcpy); here ISA-L
  writes straight into the bytes objects that are returned;
- the work goes column by column (64 KiB of each fragment): a column of the input is copied
  into the data fragments, coded into the parities and hashed (XXH3-64, ext/xxhash, runtime
  AVX2 dispatch) while it is still in cache, so memory is read once;
- decode reads the 3 fragments it uses once too: hash, copy the data fragments into the
  output, rebuild the missing ones, column by column;
- all of it runs without the GIL, so other threads run meanwhile (and several threads
  can code at once).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

import os

from shoal.erasure import format as _format
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

__all__ = ["assemble", "check", "decode", "encode", "engine", "fragment_info", "header_info"]

cdef extern from "shoal_xxh.h" nogil:
    ctypedef struct XXH3_state_t:
        pass
    void XXH3_64bits_reset(XXH3_state_t *st)
    uint64_t XXH3_64bits_digest(const XXH3_state_t *st)
    void SHOAL_XXH3_UPDATE(XXH3_state_t *st, const void *p, size_t n)
    uint64_t shoal_xxh3(const void *p, size_t n)
    uint64_t shoal_copy_xxh3(char *dst, const char *src, size_t take, size_t total)
    uint32_t shoal_crc32(const unsigned char *p, size_t n)

cdef extern from "dlfcn.h" nogil:
    void *dlopen(const char *path, int flags)
    void *dlsym(void *handle, const char *name)
    int RTLD_NOW
    int RTLD_NOLOAD

# ISA-L's API (isa-l/include/erasure_code.h)
ctypedef void (*gen_matrix_f)(unsigned char *a, int m, int k) noexcept nogil
ctypedef void (*init_tables_f)(int k, int rows, unsigned char *a, unsigned char *gftbls) noexcept nogil
ctypedef void (*encode_data_f)(
    int length, int k, int rows, unsigned char *gftbls, unsigned char **data, unsigned char **coding
) noexcept nogil
ctypedef int (*invert_matrix_f)(unsigned char *inp, unsigned char *out, const int n) noexcept nogil

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
    COLUMN = 64 * 1024  # bytes of each fragment per step: 5 of them (320 KiB) stay in L2

assert HEADER_SIZE == HSIZE and OFF_MAGIC == O_MAGIC and OFF_CHECK == O_CHECK and OFF_META_CRC == O_META_CRC
assert MAGIC == b"SHEC" and (_format.K, _format.M, _format.N) == (K, M, N) and VERSION == 2
cdef const char *_MAGIC = b"SHEC"
cdef int _VERSION = VERSION

cdef encode_data_f _ec_encode_data = NULL
cdef init_tables_f _ec_init_tables = NULL
cdef invert_matrix_f _gf_invert_matrix = NULL
cdef unsigned char _matrix[N * K]  # rows 0..2 identity, 3..4 the parity coefficients
cdef unsigned char _encode_tables[K * M * 32]
cdef unsigned char _templates[N][HSIZE]  # pyeclib's header of fragment i (fields set per encode)
cdef bint _direct = False


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


cdef inline void _seal(unsigned char **frags, uint64_t length, const uint64_t *hashes) noexcept nogil:
    """Write shoal's fields (stripe id, payload hashes) into the k+m headers and seal them."""
    cdef unsigned char ids[8 + 8 * N]
    cdef unsigned char sid[8]
    cdef int i
    _put_u64(ids, length)
    for i in range(N):
        _put_u64(ids + 8 + 8 * i, hashes[i])
    _put_u64(sid, shoal_xxh3(ids, 8 + 8 * N))
    for i in range(N):
        _finish_header(frags[i], sid, hashes[i])


# ---- ISA-L, found where pyeclib's backend loaded it ----


def _loaded_isal() -> bytes | None:
    """Path of the libisal this process already has mapped (pyeclib's backend dlopens it)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:  # address perms offset dev inode [path]
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libisal"):
                    return fields[5].strip().encode()
    except OSError:
        pass
    return None


cdef bint _bind_isal():
    global _ec_encode_data, _ec_init_tables, _gf_invert_matrix
    if _format.backend() != "isa_l_rs_vand" or not _format.LAYOUT_OK:
        return False
    path = _loaded_isal()
    if path is None:
        return False
    cdef void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD)  # the same copy pyeclib uses, never a new one
    if lib == NULL:
        return False
    cdef gen_matrix_f gen = <gen_matrix_f> dlsym(lib, "gf_gen_rs_matrix")  # isa_l_rs_vand's matrix
    _ec_init_tables = <init_tables_f> dlsym(lib, "ec_init_tables")
    _ec_encode_data = <encode_data_f> dlsym(lib, "ec_encode_data")
    _gf_invert_matrix = <invert_matrix_f> dlsym(lib, "gf_invert_matrix")
    if gen == NULL or _ec_init_tables == NULL or _ec_encode_data == NULL or _gf_invert_matrix == NULL:
        return False
    gen(_matrix, N, K)
    _ec_init_tables(K, M, &_matrix[K * K], _encode_tables)
    cdef int i
    probe = DRIVER.encode(b"\0\0\0")
    for i in range(N):
        memcpy(_templates[i], PyBytes_AS_STRING(probe[i]), HSIZE)
    return True


cdef bint _direct_agrees():
    """Whether coding with ISA-L here gives pyeclib's fragments and decodes them back."""
    cdef int length
    for length in (0, 1, 5, 96, 1001, 65537, 3 * COLUMN + 7):
        data = bytes([(i * 7 + 3) & 0xFF for i in range(length)])
        frags = _encode_direct(data)
        if frags != _encode_pyeclib(data):
            return False
        for keep in ((2, 3, 4), (0, 3, 4), (1, 2, 4), (0, 1, 3)):
            out, oks = _decode_direct([frags[i] for i in keep], list(keep), length, None)
            if out != data or not all(oks):
                return False
    return True


def engine() -> str:
    """What codes: 'isa-l' (directly, the library pyeclib loaded) or 'pyeclib' (fallback)."""
    return "isa-l" if _direct else "pyeclib"


# ---- encode ----


cdef void _encode_columns(
    const char *src, Py_ssize_t length, Py_ssize_t per, unsigned char **frags, uint64_t *hashes
) noexcept nogil:
    """Fill the 5 payloads (after each header) and hash them, one cache-sized column at a time."""
    cdef XXH3_state_t st[N]
    cdef unsigned char *data[K]
    cdef unsigned char *parity[M]
    cdef Py_ssize_t o = 0, n, take
    cdef int i
    for i in range(N):
        XXH3_64bits_reset(&st[i])
    while o < per:
        n = min(<Py_ssize_t> COLUMN, per - o)
        for i in range(K):
            data[i] = frags[i] + HSIZE + o
            take = _inside(i, per, length, o, n)
            if take > 0:
                memcpy(data[i], src + i * per + o, take)
            if take < n:
                memset(data[i] + take, 0, n - take)  # the last data fragment's zero padding
            SHOAL_XXH3_UPDATE(&st[i], data[i], n)
        for i in range(M):
            parity[i] = frags[K + i] + HSIZE + o
        _ec_encode_data(<int> n, K, M, _encode_tables, data, parity)
        for i in range(M):
            SHOAL_XXH3_UPDATE(&st[K + i], parity[i], n)
        o += n
    for i in range(N):
        hashes[i] = XXH3_64bits_digest(&st[i])


cdef list _encode_direct(bytes data):
    cdef Py_ssize_t length = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t per = (length + K - 1) // K
    if per > 0x7FFFFFFF:  # ISA-L and liberasurecode's header take an int / u32
        raise ErasureError(f"cannot encode {length} bytes in one stripe (payload over 2 GiB)")
    cdef list out = [PyBytes_FromStringAndSize(NULL, HSIZE + per) for _ in range(N)]
    cdef unsigned char *frags[N]
    cdef uint64_t hashes[N]
    cdef const char *src = PyBytes_AS_STRING(data)
    cdef int i
    for i in range(N):
        frags[i] = <unsigned char *> PyBytes_AS_STRING(out[i])
    with nogil:
        _encode_columns(src, length, per, frags, hashes)
        for i in range(N):
            memcpy(frags[i], _templates[i], HSIZE)
            _put_u32(frags[i] + 4, <uint32_t> per)
            _put_u64(frags[i] + 12, <uint64_t> length)
        _seal(frags, <uint64_t> length, hashes)
    return out


cdef list _encode_pyeclib(bytes data):
    """The fallback: pyeclib codes, shoal hashes and writes its fields into copies of its bytes."""
    cdef Py_ssize_t length = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t per = (length + K - 1) // K
    inner = DRIVER.encode(data)
    if type(inner) is not list or len(inner) != N:
        raise ErasureError("pyeclib returned an unexpected fragment list")
    cdef list out = []
    cdef unsigned char *frags[N]
    cdef uint64_t hashes[N]
    cdef int i
    for i in range(N):
        frag = inner[i]
        if type(frag) is not bytes or PyBytes_GET_SIZE(frag) != HSIZE + per:
            raise ErasureError("pyeclib returned fragments of an unexpected shape")
        if _get_u32(<const unsigned char *> PyBytes_AS_STRING(frag)) != i:
            raise ErasureError("pyeclib returned fragments out of order")
        frag = PyBytes_FromStringAndSize(PyBytes_AS_STRING(frag), HSIZE + per)  # never write into theirs
        out.append(frag)
        frags[i] = <unsigned char *> PyBytes_AS_STRING(frag)
    with nogil:
        for i in range(N):
            hashes[i] = shoal_xxh3(frags[i] + HSIZE, per)
        _seal(frags, <uint64_t> length, hashes)
    return out


def encode(data) -> list:
    """The k+m fragments of `data` (any bytes-like object)."""
    require_layout()
    if type(data) is not bytes:
        data = bytes(data)
    return _encode_direct(data) if _direct else _encode_pyeclib(data)


# ---- decode ----


cdef int _rebuild_tables(const int *index, unsigned char *tables, int *missing) noexcept nogil:
    """ISA-L tables that rebuild the data fragments missing from `index` (3 fragment indices).

    Returns how many are missing (their indices in `missing`), or -1 if the rows do not invert.
    """
    cdef unsigned char rows[K * K]
    cdef unsigned char inverse[K * K]
    cdef unsigned char wanted[K * K]
    cdef int i, j, n = 0
    cdef bint have
    for i in range(K):
        memcpy(&rows[i * K], &_matrix[index[i] * K], K)
    if _gf_invert_matrix(rows, inverse, K) != 0:
        return -1
    for i in range(K):
        have = False
        for j in range(K):
            have = have or index[j] == i
        if not have:
            memcpy(&wanted[n * K], &inverse[i * K], K)  # data i = row i of the inverse . fragments
            missing[n] = i
            n += 1
    if n:
        _ec_init_tables(K, n, wanted, tables)
    return n


cdef tuple _decode_direct(list frags, list indices, uint64_t length, list want):
    """(original or None, [payload ok]) from k fragments (ascending indices), in one pass each.

    `want` holds the payload hashes from their headers (None: the probe at import, which
    hashes nothing and reports every payload ok).
    """
    cdef Py_ssize_t per = (length + K - 1) // K
    cdef const unsigned char[::1] v0 = frags[0]
    cdef const unsigned char[::1] v1 = frags[1]
    cdef const unsigned char[::1] v2 = frags[2]
    cdef const unsigned char *ins[K]
    cdef int index[K]
    cdef int missing[K]
    cdef unsigned char tables[K * K * 32]
    cdef int i, nmiss
    for i in range(K):
        index[i] = indices[i]
    for i, size in enumerate((v0.shape[0], v1.shape[0], v2.shape[0])):
        if size != HSIZE + per:
            raise CorruptFragment(f"fragment {index[i]} is {size} bytes, {HSIZE + per} expected")
    ins[0] = &v0[0] + HSIZE
    ins[1] = &v1[0] + HSIZE
    ins[2] = &v2[0] + HSIZE
    nmiss = _rebuild_tables(index, tables, missing)
    if nmiss < 0:
        raise ErasureError(f"fragments {indices} do not determine the data")
    cdef bytes out = PyBytes_FromStringAndSize(NULL, length)
    cdef char *dst = PyBytes_AS_STRING(out)
    cdef unsigned char *scratch = <unsigned char *> malloc(K * COLUMN)
    if scratch == NULL:
        raise MemoryError()
    cdef uint64_t got[K]
    cdef bint hashing = want is not None
    with nogil:
        _decode_columns(ins, index, missing, nmiss, tables, per, length, dst, scratch, got, hashing)
    free(scratch)
    if not hashing:
        return out, [True] * K
    oks = [got[i] == want[i] for i in range(K)]
    return (out if all(oks) else None), oks


cdef void _decode_columns(
    const unsigned char **ins, const int *index, const int *missing, int nmiss, unsigned char *tables,
    Py_ssize_t per, Py_ssize_t length, char *dst, unsigned char *scratch, uint64_t *got, bint hashing,
) noexcept nogil:
    cdef XXH3_state_t st[K]
    cdef unsigned char *col_in[K]
    cdef unsigned char *col_out[K]
    cdef Py_ssize_t o = 0, n, take
    cdef int i
    for i in range(K):
        XXH3_64bits_reset(&st[i])
    while o < per:
        n = min(<Py_ssize_t> COLUMN, per - o)
        for i in range(K):
            col_in[i] = <unsigned char *> ins[i] + o
            if hashing:
                SHOAL_XXH3_UPDATE(&st[i], col_in[i], n)
            if index[i] < K:  # a data fragment: its bytes of this column go to the output
                take = _inside(index[i], per, length, o, n)
                if take > 0:
                    memcpy(dst + index[i] * per + o, col_in[i], take)
        for i in range(nmiss):  # straight into the output unless the column runs past its end
            take = _inside(missing[i], per, length, o, n)
            col_out[i] = <unsigned char *> dst + missing[i] * per + o if take == n else scratch + i * COLUMN
        if nmiss:
            _ec_encode_data(<int> n, K, nmiss, tables, col_in, col_out)
        for i in range(nmiss):
            take = _inside(missing[i], per, length, o, n)
            if 0 < take < n:
                memcpy(dst + missing[i] * per + o, col_out[i], take)
        o += n
    for i in range(K):
        got[i] = XXH3_64bits_digest(&st[i])


cdef inline Py_ssize_t _inside(int frag, Py_ssize_t per, Py_ssize_t length, Py_ssize_t o, Py_ssize_t n) noexcept nogil:
    """How many of data fragment `frag`'s bytes [o, o+n) are original bytes (not padding)."""
    cdef Py_ssize_t start = frag * per + o
    return 0 if start >= length else min(n, length - start)


def _decode_payloads(list frags, list infos, uint64_t length, bint fast):
    """(original or None, [payload ok]) for k header-checked fragments; see format.decode_with."""
    if fast:
        return _assemble_checked(frags, infos, length)
    if _direct:
        return _decode_direct(frags, [info.index for info in infos], length, [info.checksum for info in infos])
    oks = [_payload_ok(frags[i], infos[i].checksum) for i in range(K)]
    if not all(oks):
        return None, oks
    return pyeclib_decode([f if type(f) is bytes else bytes(f) for f in frags], length), oks


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


_direct = _bind_isal()
if _direct and not _direct_agrees():
    _direct = False
