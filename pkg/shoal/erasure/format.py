"""What the native framing (ext/erasure.pyx) and its twin (shoal._pure.erasure) share.

The fragment format, the errors, the one ECDriver of the process, the decode logic both
implementations drive with their own primitives, and the glibc malloc tuning without which
pyeclib is 5-25x slower on 2 MiB stripes. Kept apart from shoal.erasure.__init__ so both
implementations can import it without an import cycle.

Format 2: a fragment IS pyeclib's fragment (liberasurecode's 80-byte header + payload), with
shoal's fields written into the header's checksum slots (liberasurecode's own checksum is off,
chksum_type "none", so it never reads them). No second header is put in front, so encode
returns pyeclib's bytes objects and decode hands stored fragments to pyeclib, with no copy.
Little-endian offsets in the 80-byte header:

    0  idx         u32  liberasurecode: fragment index 0..k+m-1 (0..k-1 data, k.. parity)
    4  size        u32  liberasurecode: payload bytes after the header
    12 orig_size   u64  liberasurecode: length of the original bytes
    21 magic       b"SHEC"                        \
    25 version     u8   (2)                        |
    26 k, 27 m     u8, u8 (3, 2)                   | shoal, in liberasurecode's chksum[8]
    28 reserved    u8   0                          |
    29 stripe_id   8 bytes: xxh3_64(length, the k+m payload hashes), LE
    37 payload     u64  xxh3_64 of the payload     |
    45 reserved    8 bytes 0                      /
    59 libec magic, 63 libec version, 67 metadata_chksum (zlib crc32 of bytes 0..59, recomputed)
    71 check       u64  xxh3_64(header[0:71]): every header field, including the payload hash
    79 reserved    u8   0

The payload hash and the header check together cover every byte. A data fragment's payload
is the original bytes, zero padded (the code is systematic, checked at import).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import xxhash
from pyeclib.ec_iface import ECDriver

K = 3
M = 2
N = K + M
EC_TYPE = "isa_l_rs_vand"
FALLBACK_EC_TYPE = "liberasurecode_rs_vand"
MAGIC = b"SHEC"
VERSION = 2
HEADER_SIZE = 80  # liberasurecode's fragment header, which carries shoal's fields
INNER_HEADER_SIZE = HEADER_SIZE  # kept for callers of format 1: the payload starts here
CHECKSUM_NAME = "xxh3"

OFF_SIZE = 4
OFF_ORIG = 12
OFF_CHKSUM_TYPE = 20
OFF_MAGIC = 21
OFF_VERSION = 25
OFF_STRIPE = 29
OFF_PAYLOAD = 37
OFF_LIBEC_MAGIC = 59
OFF_META_CRC = 67
META_SIZE = 59  # liberasurecode's fragment_metadata_t, covered by metadata_chksum
OFF_CHECK = 71
OFF_LAST = 79
SHOAL_FIELDS = struct.Struct("<4sBBBB8sQ8x")  # at OFF_MAGIC: magic, version, k, m, 0, stripe, payload
LIBEC_MAGIC = 0xB0C5ECC

# glibc: M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3 (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit
TRIM_THRESHOLD = 128 << 20

xxh3: Callable[[object], int] = xxhash.xxh3_64_intdigest  # releases the GIL above 64 KiB


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
    """The verified header of one fragment."""

    index: int
    k: int
    m: int
    length: int  # of the original bytes
    stripe_id: str  # 16 hex digits, equal for the k+m fragments of one encode
    payload_size: int  # bytes after the 80-byte header
    checksum: int  # xxh3_64 of the payload (the header has its own check)
    version: int = VERSION

    @property
    def size(self) -> int:
        """Length of the whole fragment (what a storage node stores)."""
        return HEADER_SIZE + self.payload_size

    @property
    def inner_size(self) -> int:
        """pyeclib's fragment: since format 2 the whole fragment."""
        return self.size

    @property
    def is_parity(self) -> bool:
        return self.index >= self.k

    @property
    def checksum_str(self) -> str:
        return f"{CHECKSUM_NAME}:{self.checksum:016x}"


def stripe_id(length: int, payload_hashes: list[int]) -> bytes:
    """8 bytes naming one encode: fragments of other data (or another length) differ here."""
    return xxh3(struct.pack(f"<Q{len(payload_hashes)}Q", length, *payload_hashes)).to_bytes(8, "little")


def finish_header(head: bytearray, length: int, sid: bytes, payload_hash: int) -> None:
    """Write shoal's fields into pyeclib's 80-byte header `head` (in place) and seal it."""
    SHOAL_FIELDS.pack_into(head, OFF_MAGIC, MAGIC, VERSION, K, M, 0, sid, payload_hash)
    struct.pack_into("<I", head, OFF_META_CRC, zlib.crc32(head[:META_SIZE]))
    struct.pack_into("<Q", head, OFF_CHECK, xxh3(bytes(head[:OFF_CHECK])))
    head[OFF_LAST] = 0


def parse_header(view: memoryview) -> FragmentInfo:
    """Check the 80-byte header of a fragment (not its payload); CorruptFragment if bad.

    Order: size, magic (a format-1 fragment is named as such), version, header check, the
    reserved byte, k/m, index, payload size against the actual length and against the
    original length.
    """
    size = len(view)
    if size < HEADER_SIZE:
        raise CorruptFragment(f"fragment of {size} bytes is shorter than its {HEADER_SIZE}-byte header")
    magic, version, k, m, _, sid, payload = SHOAL_FIELDS.unpack_from(view, OFF_MAGIC)
    if magic != MAGIC:
        if bytes(view[:4]) == MAGIC:
            raise CorruptFragment(
                f"fragment in shoal erasure format 1 (header before pyeclib's), "
                f"this build reads format {VERSION} only: re-encode it"
            )
        raise CorruptFragment("not a shoal erasure fragment (bad magic)")
    if version != VERSION:
        raise CorruptFragment(f"unsupported fragment version {version} (this build reads {VERSION})")
    index, psize = struct.unpack_from("<II", view, 0)
    (check,) = struct.unpack_from("<Q", view, OFF_CHECK)
    if check != xxh3(view[:OFF_CHECK]):
        raise CorruptFragment(f"header checksum mismatch in fragment {index}")
    if view[OFF_LAST] != 0:
        raise CorruptFragment(f"reserved header byte {OFF_LAST} is not zero in fragment {index}")
    if (k, m) != (K, M):
        raise CorruptFragment(f"fragment is {k}+{m}, this build decodes {K}+{M}")
    if index >= N:
        raise CorruptFragment(f"fragment index {index} is out of range 0..{N - 1}")
    (length,) = struct.unpack_from("<Q", view, OFF_ORIG)
    if psize != size - HEADER_SIZE:
        raise CorruptFragment(f"payload is {size - HEADER_SIZE} bytes, header says {psize}")
    if psize != payload_size(length):
        raise CorruptFragment(f"payload of {psize} bytes does not fit an original length of {length}")
    return FragmentInfo(index, k, m, length, sid.hex(), psize, payload)


def payload_size(length: int) -> int:
    """Payload bytes of each fragment for `length` original bytes (ceil(length / k))."""
    return -(-length // K)


def inner_size(length: int) -> int:
    """Size of pyeclib's fragment, which is the whole fragment since format 2."""
    return HEADER_SIZE + payload_size(length)


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


def _layout_ok(d: ECDriver) -> bool:
    """Whether pyeclib's fragments have the layout format 2 relies on, checked on samples.

    80-byte header with idx/size/orig_size where liberasurecode puts them, its checksum off
    (slots zero, so shoal may use them), metadata_chksum = zlib crc32 of bytes 0..59, zero
    padding, and a systematic code: data fragment i's payload is original bytes
    [i*P, (i+1)*P) with P = ceil(length / k), zero padded.
    """
    for length in (0, 1, 5, 96, 1001, 65537):
        data = bytes((i * 7 + 3) & 0xFF for i in range(length))
        frags = d.encode(data)
        per = payload_size(length)
        if len(frags) != N:
            return False
        for i, f in enumerate(frags):
            h = f[:HEADER_SIZE]
            ok = (
                type(f) is bytes
                and len(f) == HEADER_SIZE + per
                and struct.unpack_from("<IIIQB", h) == (i, per, 0, length, 1)
                and h[OFF_MAGIC:53] == bytes(32)
                and struct.unpack_from("<I", h, OFF_LIBEC_MAGIC)[0] == LIBEC_MAGIC
                and struct.unpack_from("<I", h, OFF_META_CRC)[0] == zlib.crc32(h[:META_SIZE])
                and h[OFF_CHECK:] == bytes(HEADER_SIZE - OFF_CHECK)
            )
            if i < K:
                part = data[i * per : (i + 1) * per]
                ok = ok and f[HEADER_SIZE:] == part + bytes(per - len(part))
            if not ok:
                return False
    return True


MALLOC_TUNED = tune_malloc()
DRIVER = _make_driver()
BACKEND = DRIVER.ec_type.name if hasattr(DRIVER.ec_type, "name") else str(DRIVER.ec_type)
LAYOUT_OK = _layout_ok(DRIVER)


def require_layout() -> None:
    """Refuse to encode with a pyeclib whose fragments format 2 cannot carry."""
    if not LAYOUT_OK:
        raise ErasureError(
            f"pyeclib's fragment layout ({backend()}) is not the one shoal's format {VERSION} "
            "relies on (liberasurecode's 80-byte header, systematic data fragments)"
        )


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


# ---- the decode logic both implementations share, driven by their own primitives ----


def items_of(fragments: Mapping[int, bytes] | Iterable[bytes]) -> tuple[list, bool]:
    if isinstance(fragments, Mapping):
        return list(fragments.items()), True
    if isinstance(fragments, bytes | bytearray | memoryview):
        raise TypeError("decode takes several fragments (a mapping or an iterable), not one")
    return list(enumerate(fragments)), False


def _screen(key, info: FragmentInfo, keyed: bool, stripe: str | None) -> str | None:
    if keyed and key != info.index:
        return f"fragment {info.index} was given under index {key!r}"
    if stripe is not None and info.stripe_id != stripe:
        return f"fragment of stripe {info.stripe_id}, not {stripe}"
    return None


def _no_mix(infos: Iterable[FragmentInfo]) -> None:
    stripes = {(info.stripe_id, info.length) for info in infos}
    if len(stripes) > 1:
        listed = ", ".join(f"{s} ({n} bytes)" for s, n in sorted(stripes))
        raise MixedStripes(f"fragments of different stripes: {listed}; pass stripe_id to choose")


def check_with(fragment_info: Callable, fragments, stripe: str | None):
    """check(): verify every fragment fully; ({index: (info, frag)}, {key: reason})."""
    valid: dict[int, tuple[FragmentInfo, object]] = {}
    rejected: dict[object, str] = {}
    for _key, info, frag in _screened(fragment_info, fragments, stripe, rejected):
        if info.index not in valid:
            valid[info.index] = (info, frag)
    _no_mix(info for info, _ in valid.values())
    return valid, rejected


def _screened(read_info: Callable, fragments, stripe: str | None, rejected: dict[object, str]):
    """(key, info, fragment) of each fragment whose header reads and fits; the others go to `rejected`."""
    items, keyed = items_of(fragments)
    for key, frag in items:
        try:
            info = read_info(frag)
        except CorruptFragment as exc:
            rejected[key] = str(exc)
            continue
        except (TypeError, ValueError, BufferError):
            rejected[key] = f"not a bytes-like object: {type(frag).__name__}"
            continue
        why = _screen(key, info, keyed, stripe)
        if why is not None:
            rejected[key] = why
        else:
            yield key, info, frag


def decode_with(header_info: Callable, payload_ok: Callable, decode_payloads: Callable, fragments, stripe):
    """decode(): headers of all, payload hashes of only the k fragments used.

    Fragments with a valid header are candidates; data fragments 0..k-1 are preferred (then
    decode is a copy), otherwise the lowest indices. `decode_payloads(frags, infos, length, fast)`
    verifies the chosen payloads (while decoding, where it can) and returns (bytes or None,
    [ok per fragment]); a fragment that fails is rejected and the next candidate is tried.
    Stripes are told apart by their (checked) headers.
    """
    cands: dict[int, list[tuple[object, FragmentInfo, object]]] = {}
    rejected: dict[object, str] = {}
    for key, info, frag in _screened(header_info, fragments, stripe, rejected):
        cands.setdefault(info.index, []).append((key, info, frag))
    _no_mix(c[0][1] for c in cands.values())

    def drop(key, info) -> None:
        rejected[key] = f"checksum mismatch in fragment {info.index}"
        cands[info.index].pop(0)
        if not cands[info.index]:
            del cands[info.index]

    verified: set[int] = set()  # id() of fragments whose payload passed

    while len(cands) >= K:
        fast = all(i in cands for i in range(K))
        chosen = list(range(K)) if fast else sorted(cands)[:K]
        picks = [cands[i][0] for i in chosen]
        length = picks[0][1].length
        out, oks = decode_payloads([p[2] for p in picks], [p[1] for p in picks], length, fast)
        if out is not None:
            return out
        for (key, info, frag), ok in zip(picks, oks, strict=True):
            if ok:
                verified.add(id(frag))
            else:
                drop(key, info)
    # too few: verify what is left so `.valid` names only fragments known to be good
    for index in sorted(cands):
        while index in cands:
            key, info, frag = cands[index][0]
            if id(frag) in verified or payload_ok(frag, info):
                break
            drop(key, info)
    valid = sorted(cands)
    reasons = "; ".join(f"{key}: {why}" for key, why in rejected.items()) or "none rejected"
    raise NotEnoughFragments(f"{len(valid)} valid fragments, {K} needed ({reasons})", valid, rejected)
