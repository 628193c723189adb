"""What the native framing (ext/erasure.pyx) and its twin (shoal._pure.erasure) share.

The fragment format, the errors, the one ECDriver of the process, and the glibc malloc
tuning without which pyeclib is 5-25x slower on 2 MiB stripes. Kept apart from
shoal.erasure.__init__ so both implementations can import it without an import cycle.

Framed fragment = 32-byte header + pyeclib's fragment ("inner"), all little-endian:

    0  magic      b"SHEC"
    4  version    u8   (1)
    5  k          u8   (3)
    6  m          u8   (2)
    7  index      u8   0..k+m-1 (0..k-1 hold the data, k.. the parity)
    8  length     u64  length of the original bytes
    16 stripe_id  8 bytes: blake3(length, crc32c of each of the k+m inner fragments)[:8]
    24 inner_len  u32  length of pyeclib's fragment that follows
    28 checksum   u32  crc32c(inner ++ header[0:28])

The checksum covers the payload and every header field, so a flipped bit anywhere is seen.
It is computed payload first so one pass over the payload suffices even though the
stripe id (in the header) depends on the checksums of all the payloads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

import blake3
from crc32c import crc32c
from pyeclib.ec_iface import ECDriver

K = 3
M = 2
N = K + M
EC_TYPE = "isa_l_rs_vand"
FALLBACK_EC_TYPE = "liberasurecode_rs_vand"
MAGIC = b"SHEC"
VERSION = 1
HEADER = struct.Struct("<4sBBBBQ8sI")  # everything before the checksum
HEADER_SIZE = HEADER.size + 4
assert HEADER_SIZE == 32

# glibc: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
TRIM_THRESHOLD = 128 << 20


class ErasureError(ValueError):
    """Base of the erasure errors: the input cannot be turned back into the original bytes."""


class CorruptFragment(ErasureError):
    """A fragment failed its checks (format, header fields or checksum)."""


class NotEnoughFragments(ErasureError):
    """Fewer than k valid fragments of one stripe; `rejected` says why the others were dropped."""

    def __init__(self, message: str, valid: list[int], rejected: dict[object, str]):
        super().__init__(message)
        self.valid = valid
        self.rejected = rejected


class MixedStripes(ErasureError):
    """Valid fragments of more than one stripe were given and no stripe_id chose between them."""


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    """The verified header of one framed fragment."""

    index: int
    k: int
    m: int
    length: int  # of the original bytes
    stripe_id: str  # 16 hex digits, equal for the k+m fragments of one encode
    inner_size: int  # pyeclib's fragment
    checksum: int  # crc32c over payload and header
    version: int = VERSION

    @property
    def size(self) -> int:
        """Length of the framed fragment."""
        return HEADER_SIZE + self.inner_size

    @property
    def is_parity(self) -> bool:
        return self.index >= self.k

    @property
    def checksum_str(self) -> str:
        return f"crc32c:{self.checksum:08x}"


def stripe_id(length: int, inner_crcs: list[int]) -> bytes:
    """8 bytes naming one encode: fragments of other data (or another length) differ here."""
    return blake3.blake3(struct.pack(f"<Q{len(inner_crcs)}I", length, *inner_crcs)).digest(8)


def tune_malloc() -> bool:
    """Keep glibc from returning and re-faulting the 0.7-2 MiB buffers pyeclib allocates per call.

    Measured here: ISA-L encode of 2 MiB ~0.2 ms tuned, 4-5 ms untuned. Process-wide, so it
    is skipped when SHOAL_ERASURE_MALLOC_TUNING=0 or when the MALLOC_*_ variables already set
    the thresholds. Returns whether the thresholds were set.
    """
    if os.environ.get("SHOAL_ERASURE_MALLOC_TUNING", "1") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_ok and trim_ok)


def _make_driver() -> ECDriver:
    try:
        d = ECDriver(k=K, m=M, ec_type=EC_TYPE)
        d.encode(b"probe")
        return d
    except Exception:  # ISA-L backend missing from this liberasurecode build
        return ECDriver(k=K, m=M, ec_type=FALLBACK_EC_TYPE)


def _inner_header_size(d: ECDriver) -> int | None:
    """liberasurecode's per-fragment header size, if its data layout is the one assemble() assumes.

    The Reed-Solomon code is systematic: data fragment i carries original bytes
    [i*P, (i+1)*P) with P = ceil(length / k) after a fixed-size header. Checked here on
    sample payloads; when it does not hold, decode always goes through pyeclib.
    """
    sizes = set()
    for length in (1, 5, 96, 1001, 65537):
        data = bytes((i * 7 + 3) & 0xFF for i in range(length))
        frags = d.encode(data)
        per = -(-length // K)
        for i in range(K):
            h = len(frags[i]) - per
            chunk = data[i * per : (i + 1) * per]
            if h < 0 or frags[i][h : h + len(chunk)] != chunk:
                return None
            sizes.add(h)
    return sizes.pop() if len(sizes) == 1 else None


MALLOC_TUNED = tune_malloc()
DRIVER = _make_driver()
BACKEND = DRIVER.ec_type.name if hasattr(DRIVER.ec_type, "name") else str(DRIVER.ec_type)
INNER_HEADER_SIZE = _inner_header_size(DRIVER)


def inner_size(length: int) -> int | None:
    """Expected size of pyeclib's fragment for `length` original bytes (None: layout unknown)."""
    if INNER_HEADER_SIZE is None:
        return None
    return INNER_HEADER_SIZE + -(-length // K)


def backend() -> str:
    """Name of the pyeclib backend in use ('isa_l_rs_vand' unless ISA-L is missing)."""
    return BACKEND.split(".")[-1]


def pyeclib_decode(inner: list[bytes], length: int) -> bytes:
    """pyeclib's decode; only ever handed bytes (it aborts the process on other buffers)."""
    if not all(type(f) is bytes for f in inner):  # not an assert: -O must not remove it
        raise TypeError("pyeclib takes bytes fragments only")
    try:
        out = DRIVER.decode(inner)
    except Exception as exc:  # checksummed input should never get here
        raise CorruptFragment(f"pyeclib could not decode: {exc}") from exc
    if len(out) != length:
        raise CorruptFragment(f"pyeclib decoded {len(out)} bytes, header says {length}")
    return out


def crc(data, value: int = 0) -> int:
    return crc32c(data, value)
