# cython: language_level=3
"""Reed-Solomon 3+2 fragment framing and stripe assembly around pyeclib.

Twin: shoal/_pure/erasure.py (same functions, byte-identical fragments, same errors). The
format, the driver and the errors live in shoal.erasure.format. The bytes are moved here
with memcpy outside the GIL, into one allocation per fragment (encode) or per stripe
(assemble); crc32c releases the GIL itself for large buffers. pyeclib keeps the GIL while
it encodes or rebuilds, which is outside this module's control.
"""

from collections.abc import Mapping

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from shoal.erasure.format import (
    DRIVER,
    HEADER_SIZE,
    INNER_HEADER_SIZE,
    K,
    M,
    MAGIC,
    N,
    VERSION,
    CorruptFragment,
    FragmentInfo,
    MixedStripes,
    NotEnoughFragments,
    crc,
    inner_size,
    pyeclib_decode,
    stripe_id,
)

__all__ = ["check", "decode", "encode", "fragment_info"]

cdef enum:
    HEAD = 28  # header bytes before the checksum
    HSIZE = 32

cdef const char *_MAGIC = b"SHEC"
cdef Py_ssize_t _INNER_HEADER = -1 if INNER_HEADER_SIZE is None else INNER_HEADER_SIZE
assert HEADER_SIZE == HSIZE and MAGIC == b"SHEC" and K == 3 and M == 2


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


def encode(data) -> list:
    """The k+m framed fragments of `data` (any bytes-like object)."""
    if type(data) is not bytes:
        data = bytes(data)
    cdef uint64_t length = len(data)
    inner = DRIVER.encode(data)
    crcs = [crc(f) for f in inner]
    cdef bytes sid = stripe_id(length, crcs)
    cdef list out = []
    cdef bytes frag, framed
    cdef Py_ssize_t ilen
    cdef unsigned char *p
    cdef const char *src
    cdef int index
    for index in range(N):
        frag = inner[index]
        ilen = len(frag)
        framed = PyBytes_FromStringAndSize(NULL, HSIZE + ilen)
        p = <unsigned char *> PyBytes_AS_STRING(framed)
        src = PyBytes_AS_STRING(frag)
        memcpy(p, _MAGIC, 4)
        p[4] = VERSION
        p[5] = K
        p[6] = M
        p[7] = index
        _put_u64(p + 8, length)
        memcpy(p + 16, PyBytes_AS_STRING(sid), 8)
        _put_u32(p + 24, <uint32_t> ilen)
        with nogil:
            memcpy(p + HSIZE, src, ilen)
        _put_u32(p + HEAD, <uint32_t> crc(framed[:HEAD], crcs[index]))
        out.append(framed)
    return out


def fragment_info(frag):
    """The header of `frag` after checking it and the checksum; CorruptFragment otherwise."""
    if frag is None:  # a typed memoryview would take None as an empty buffer
        raise TypeError("a fragment must be bytes-like, not None")
    cdef const unsigned char[::1] view = frag
    cdef Py_ssize_t size = view.shape[0]
    if size < HSIZE:
        raise CorruptFragment(f"fragment of {size} bytes is shorter than its {HSIZE}-byte header")
    cdef const unsigned char *p = &view[0]
    if memcmp(p, _MAGIC, 4) != 0:
        raise CorruptFragment("not a shoal erasure fragment (bad magic)")
    if p[4] != VERSION:
        raise CorruptFragment(f"unsupported fragment version {p[4]}")
    if p[5] != K or p[6] != M:
        raise CorruptFragment(f"fragment is {p[5]}+{p[6]}, this build decodes {K}+{M}")
    if p[7] >= N:
        raise CorruptFragment(f"fragment index {p[7]} is out of range 0..{N - 1}")
    cdef uint64_t length = _get_u64(p + 8)
    cdef uint32_t ilen = _get_u32(p + 24)
    if ilen != size - HSIZE:
        raise CorruptFragment(f"payload is {size - HSIZE} bytes, header says {ilen}")
    if _INNER_HEADER >= 0 and ilen != _INNER_HEADER + (length + K - 1) // K:
        raise CorruptFragment(f"payload of {ilen} bytes does not fit an original length of {length}")
    cdef uint32_t stored = _get_u32(p + HEAD)
    if stored != crc(view[:HEAD], crc(view[HSIZE:])):
        raise CorruptFragment(f"checksum mismatch in fragment {p[7]}")
    return FragmentInfo(p[7], p[5], p[6], length, (<const char *> p)[16:24].hex(), ilen, stored)


cdef tuple _items(fragments):
    if isinstance(fragments, Mapping):
        return list(fragments.items()), True
    if isinstance(fragments, (bytes, bytearray, memoryview)):
        raise TypeError("decode takes several fragments (a mapping or an iterable), not one")
    return list(enumerate(fragments)), False


def check(fragments, stripe_id=None):
    """Verify every fragment: ({index: (info, fragment)} of the valid ones, {key: reason} of the rest).

    Keys are the mapping's keys (which must equal the fragment's index) or positions in the
    iterable. A stripe_id keeps only that stripe; without one, valid fragments of two
    stripes raise MixedStripes.
    """
    items, keyed = _items(fragments)
    cdef dict valid = {}
    cdef dict rejected = {}
    for key, frag in items:
        try:
            info = fragment_info(frag)
        except CorruptFragment as exc:
            rejected[key] = str(exc)
            continue
        except (TypeError, ValueError, BufferError):
            rejected[key] = f"not a bytes-like object: {type(frag).__name__}"
            continue
        if keyed and key != info.index:
            rejected[key] = f"fragment {info.index} was given under index {key!r}"
        elif stripe_id is not None and info.stripe_id != stripe_id:
            rejected[key] = f"fragment of stripe {info.stripe_id}, not {stripe_id}"
        elif info.index not in valid:
            valid[info.index] = (info, frag)
    stripes = {(info.stripe_id, info.length) for info, _ in valid.values()}
    if len(stripes) > 1:
        listed = ", ".join(f"{s} ({n} bytes)" for s, n in sorted(stripes))
        raise MixedStripes(f"fragments of different stripes: {listed}; pass stripe_id to choose")
    return valid, rejected


def decode(fragments, stripe_id=None) -> bytes:
    """The original bytes from any k valid fragments of one stripe; corrupt ones are skipped."""
    valid, rejected = check(fragments, stripe_id)
    if len(valid) < K:
        reasons = "; ".join(f"{key}: {why}" for key, why in rejected.items()) or "none rejected"
        raise NotEnoughFragments(
            f"{len(valid)} valid fragments, {K} needed ({reasons})", sorted(valid), rejected
        )
    length = next(iter(valid.values()))[0].length
    if _INNER_HEADER >= 0 and 0 in valid and 1 in valid and 2 in valid:
        return assemble([valid[0][1], valid[1][1], valid[2][1]], length)
    inner = [_payload(valid[i][1]) for i in sorted(valid)[:K]]
    return pyeclib_decode(inner, length)


cdef bytes _payload(frag):
    """pyeclib's fragment inside a framed one, as bytes (pyeclib takes nothing else)."""
    cdef const unsigned char[::1] view = frag
    cdef Py_ssize_t n = view.shape[0] - HSIZE
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef char *dst = PyBytes_AS_STRING(out)
    with nogil:
        memcpy(dst, &view[HSIZE], n)
    return out


def assemble(list data_fragments, uint64_t length) -> bytes:
    """Concatenate the payloads of data fragments 0..k-1 (checked already) into the original."""
    cdef Py_ssize_t per = (length + K - 1) // K
    cdef Py_ssize_t start = HSIZE + _INNER_HEADER
    cdef Py_ssize_t i, take, done = 0
    cdef const unsigned char[::1] view
    cdef bytes out = PyBytes_FromStringAndSize(NULL, length)
    cdef char *dst = PyBytes_AS_STRING(out)
    for i in range(K):
        view = data_fragments[i]
        take = min(per, <Py_ssize_t> length - done)
        if take <= 0:
            break
        if view.shape[0] < start + take:
            raise CorruptFragment(f"data fragment {i} is too short to assemble")
        with nogil:
            memcpy(dst + done, &view[start], take)
        done += take
    return out
