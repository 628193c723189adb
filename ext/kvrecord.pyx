# cython: language_level=3
"""shoal.kv's per-call hot path: key validation and the LMDB record codec.

Twin: shoal/_pure/kvrecord.py (same API, same bytes). A get or set through the store spends
most of its Python time here (bench/kv: validating a key and decoding a record into an Entry
cost about as much as LMDB's own get), so both are one C call each.

Record (LmdbStore): <version u64, revision u64, created_at f64, updated_at f64> little-endian,
then the value. Change-log record: <event u8, version u64, key length u16> + key + value.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint64_t
from libc.string cimport memchr, memcpy

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

DEF MAX_KEY_BYTES = 1024
DEF HDR_SIZE = 32
DEF CHG_SIZE = 11

cdef object _explain = None
cdef object _entry = None


def bind(explain, entry_type):
    """Set the slow-path key explainer (raises InvalidKey) and the Entry type (shoal.kv calls this)."""
    global _explain, _entry
    _explain = explain
    _entry = entry_type


def check_key(key):
    """The key's UTF-8 bytes; any bad key goes to the explainer, which raises InvalidKey."""
    cdef Py_ssize_t n
    cdef const char *s
    if type(key) is str:
        try:
            s = PyUnicode_AsUTF8AndSize(key, &n)
        except UnicodeEncodeError:
            return _explain(key)
        if 0 < n <= MAX_KEY_BYTES and s[0] == 47 and memchr(s, 0, n) == NULL:  # 47: "/"
            return PyBytes_FromStringAndSize(s, n)
    return _explain(key)


cdef inline uint64_t _get_u64(const uint8_t *p) noexcept nogil:
    return (<uint64_t> p[0] | <uint64_t> p[1] << 8 | <uint64_t> p[2] << 16 | <uint64_t> p[3] << 24
            | <uint64_t> p[4] << 32 | <uint64_t> p[5] << 40 | <uint64_t> p[6] << 48 | <uint64_t> p[7] << 56)


cdef inline void _put_u64(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t> (v >> (8 * i))


cdef inline double _get_f64(const uint8_t *p) noexcept nogil:
    cdef uint64_t bits = _get_u64(p)
    cdef double d
    memcpy(&d, &bits, 8)
    return d


cdef inline void _put_f64(uint8_t *p, double d) noexcept nogil:
    cdef uint64_t bits
    memcpy(&bits, &d, 8)
    _put_u64(p, bits)


def decode_entry(str key, bytes buf):
    """The Entry a stored record holds (ValueError for a record shorter than its header)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    if n < HDR_SIZE:
        raise ValueError(f"a kv record is at least {HDR_SIZE} bytes, got {n}")
    cdef const uint8_t *p = <const uint8_t *> PyBytes_AS_STRING(buf)
    value = PyBytes_FromStringAndSize(<const char *> p + HDR_SIZE, n - HDR_SIZE)
    return _entry(key, value, _get_u64(p), _get_f64(p + 16), _get_f64(p + 24), _get_u64(p + 8))


def record_version(bytes buf):
    """The version field of a stored record."""
    if PyBytes_GET_SIZE(buf) < 8:
        raise ValueError("a kv record is at least 8 bytes")
    return _get_u64(<const uint8_t *> PyBytes_AS_STRING(buf))


def encode_record(uint64_t version, uint64_t revision, double created, double updated, bytes value):
    """The stored record: header + value, in one allocation."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    out = PyBytes_FromStringAndSize(NULL, HDR_SIZE + n)
    cdef uint8_t *p = <uint8_t *> PyBytes_AS_STRING(out)
    _put_u64(p, version)
    _put_u64(p + 8, revision)
    _put_f64(p + 16, created)
    _put_f64(p + 24, updated)
    memcpy(p + HDR_SIZE, PyBytes_AS_STRING(value), n)
    return out


def encode_change(uint8_t code, uint64_t version, bytes raw, value):
    """A change-log record: <event u8, version u64, key length u16> + key + value (None: no value)."""
    cdef Py_ssize_t k = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t n = 0 if value is None else PyBytes_GET_SIZE(<bytes> value)
    if k > 0xFFFF:
        raise ValueError("a key in the change log is at most 65535 bytes")
    out = PyBytes_FromStringAndSize(NULL, CHG_SIZE + k + n)
    cdef uint8_t *p = <uint8_t *> PyBytes_AS_STRING(out)
    p[0] = code
    _put_u64(p + 1, version)
    p[9] = <uint8_t> (k & 0xFF)
    p[10] = <uint8_t> (k >> 8)
    memcpy(p + CHG_SIZE, PyBytes_AS_STRING(raw), k)
    if n:
        memcpy(p + CHG_SIZE + k, PyBytes_AS_STRING(<bytes> value), n)
    return out
