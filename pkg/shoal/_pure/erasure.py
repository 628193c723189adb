"""Reed-Solomon 3+2 fragment framing and stripe assembly around pyeclib, in pure Python.

Twin of ext/erasure.pyx: same functions, byte-identical fragments, same decode results and
errors. The format, the decode logic and the shared pieces (driver, errors, FragmentInfo)
are in shoal.erasure.format. Unlike the native module (which calls ISA-L itself) it codes
through pyeclib, holding the GIL, and copies each fragment once to write shoal's fields into
pyeclib's header (Python bytes are immutable).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shoal.erasure.format import (
    DRIVER,
    HEADER_SIZE,
    CorruptFragment,
    FragmentInfo,
    K,
    N,
    check_with,
    decode_with,
    finish_header,
    parse_header,
    payload_size,
    pyeclib_decode,
    require_layout,
    stripe_id,
    xxh3,
)

__all__ = ["assemble", "check", "decode", "encode", "engine", "fragment_info", "header_info"]


def engine() -> str:
    """What codes: the twin always goes through pyeclib."""
    return "pyeclib"


def encode(data) -> list[bytes]:
    """The k+m fragments of `data` (any bytes-like object)."""
    require_layout()
    data = bytes(data)
    inner = DRIVER.encode(data)
    if len(inner) != N or any(len(f) != HEADER_SIZE + payload_size(len(data)) for f in inner):
        raise CorruptFragment("pyeclib returned fragments of an unexpected shape")
    hashes = [xxh3(memoryview(f)[HEADER_SIZE:]) for f in inner]
    sid = stripe_id(len(data), hashes)
    out = []
    for frag, h in zip(inner, hashes, strict=True):
        head = bytearray(frag[:HEADER_SIZE])
        finish_header(head, len(data), sid, h)
        out.append(b"".join((head, memoryview(frag)[HEADER_SIZE:])))
    return out


def header_info(frag) -> FragmentInfo:
    """The checked header of `frag`, its payload not yet verified; CorruptFragment if bad."""
    if frag is None:
        raise TypeError("a fragment must be bytes-like, not None")
    return parse_header(memoryview(frag).cast("B"))


def payload_ok(frag, info: FragmentInfo) -> bool:
    return xxh3(memoryview(frag).cast("B")[HEADER_SIZE:]) == info.checksum


def fragment_info(frag) -> FragmentInfo:
    """The header of `frag` after checking it and the payload hash; CorruptFragment otherwise."""
    info = header_info(frag)
    if not payload_ok(frag, info):
        raise CorruptFragment(f"checksum mismatch in fragment {info.index}")
    return info


def check(
    fragments: Mapping[int, bytes] | Iterable[bytes], stripe_id: str | None = None
) -> tuple[dict[int, tuple[FragmentInfo, object]], dict[object, str]]:
    """Verify every fragment: ({index: (info, fragment)} of the valid ones, {key: reason} of the rest).

    Keys are the mapping's keys (which must equal the fragment's index) or positions in the
    iterable. A stripe_id keeps only that stripe; without one, valid fragments of two
    stripes raise MixedStripes.
    """
    return check_with(fragment_info, fragments, stripe_id)


def _decode_payloads(frags: list, infos: list, length: int, fast: bool) -> tuple[bytes | None, list[bool]]:
    oks = [payload_ok(f, info) for f, info in zip(frags, infos, strict=True)]
    if not all(oks):
        return None, oks
    if fast:
        return assemble(frags, length), oks
    return pyeclib_decode([f if type(f) is bytes else bytes(f) for f in frags], length), oks


def decode(fragments: Mapping[int, bytes] | Iterable[bytes], stripe_id: str | None = None) -> bytes:
    """The original bytes from any k valid fragments of one stripe; corrupt ones are skipped.

    Only the payloads of the k fragments used are hashed (a further one only if one fails).
    """
    return decode_with(header_info, payload_ok, _decode_payloads, fragments, stripe_id)


def assemble(data_fragments: list, length: int) -> bytes:
    """Concatenate the payloads of data fragments 0..k-1 (checked already) into the original."""
    per = payload_size(length)
    parts = []
    for i, frag in enumerate(data_fragments[:K]):
        take = max(0, min(per, length - i * per))
        view = memoryview(frag).cast("B")
        if len(view) < HEADER_SIZE + take:
            raise CorruptFragment(f"data fragment {i} is too short to assemble")
        parts.append(view[HEADER_SIZE : HEADER_SIZE + take])
    return b"".join(parts)
